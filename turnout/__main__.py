from turnout.cli import main
import sys

sys.exit(main())
