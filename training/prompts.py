"""Seeded generator of realistic user prompts for the world simulator.

``generate_prompt(category, rng, difficulty)`` composes a prompt from templates and slot fillers.
The latent ``difficulty`` in [0, 1] shows in the text: easy prompts are short and bare ("hi there!",
"how do i sort a list in python"); hard ones carry context, several constraints or sub-questions,
code snippets, tracebacks, data or whole paragraphs. Pure and deterministic given the rng state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CATEGORIES: tuple[str, ...] = ("code", "math", "writing", "knowledge", "chat", "translation")


@dataclass(frozen=True, slots=True)
class GeneratedPrompt:
    text: str
    category: str
    difficulty: float  # in [0, 1]


# ----------------------------------------------------------------------------------------------
# shared slot fillers
NAMES = ("Maria", "James", "Aisha", "Tom", "Priya", "Lukas", "Sofia", "Kenji", "Emma", "Omar",
         "Chloe", "Diego", "Hannah", "Wei", "Fatima", "Noah", "Olga", "Sam")
RELATIONS = ("mom", "dad", "sister", "brother", "best friend", "boyfriend", "girlfriend", "boss",
             "roommate", "coworker", "grandma", "husband", "wife", "partner")
CITIES = ("Paris", "Berlin", "Tokyo", "Madrid", "Lisbon", "Toronto", "Chicago", "Seoul", "Rome",
          "Amsterdam", "Mumbai", "Mexico City", "Istanbul", "Warsaw", "Sydney")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
TONES = ("professional", "friendly", "formal", "casual", "persuasive", "warm", "confident",
         "apologetic", "witty", "empathetic", "enthusiastic", "concise")
ASK_FORMS = ("{c}.", "{c}", "Could you {c}?", "Can you {c}?", "Please {c}.", "I need you to {c}.",
             "Hey, can you {c}?", "{c} pls", "I'd like you to {c}.", "Help me {c}.",
             "Would you be able to {c}?", "I want you to {c}.")
REQ_LEADS = ("Requirements:", "Constraints:", "A few requirements:", "Please make sure to:",
             "It needs to:", "Things to keep in mind:")
PROSE_LEADS = ("Make sure to", "Please", "Also,", "It should", "Try to", "Ideally,")

# ----------------------------------------------------------------------------------------------
# code
CODE_LANGS = ("Python", "Python", "JavaScript", "TypeScript", "SQL", "Rust", "Go", "Bash", "Java",
              "C++", "C#")
CODE_EASY_TASKS = ("reverse a string", "sort a list", "read a file line by line",
                   "get the current date", "loop over a dictionary", "convert a string to an int",
                   "check if a key exists", "remove an item from a list", "concatenate strings",
                   "get the length of an array", "make an http request", "comment out multiple lines",
                   "print without a newline", "generate a random number", "round to 2 decimals",
                   "split a string by comma", "check if a file exists", "append to a list",
                   "uppercase a string", "get the last element of an array", "sleep for 1 second",
                   "parse json", "format a date", "declare a constant")
CODE_EASY_FORMS = ("how do i {x} in {lang}", "{lang} {x}", "how to {x} {lang}",
                   "what's the syntax to {x} in {lang}?", "how can I {x} in {lang}?",
                   "{x} in {lang}?", "quick question: how do you {x} in {lang}")
CODE_CONCEPTS = ("closure", "decorator", "promise", "pointer", "lambda", "goroutine", "generic",
                 "interface", "callback", "iterator", "trait", "mutex", "hash map", "recursion",
                 "async function", "class", "enum", "foreign key", "index", "pipe")
CODE_TASKS = ("checks whether a string is a palindrome", "returns the {k} most frequent words in a text file",
              "merges two sorted lists into one sorted list", "validates an email address",
              "flattens an arbitrarily nested list", "implements an LRU cache with capacity {n}",
              "computes compound interest given principal, annual rate and number of years",
              "parses a CSV file and sums the `{col}` column",
              "retries an HTTP request with exponential backoff, up to {k} attempts",
              "finds all files larger than {n} MB in a directory tree",
              "computes a moving average over a window of {k} values",
              "converts a Roman numeral to an integer", "groups a list of {entity} records by `{col}`",
              "removes duplicate {entity} records based on `{col}`",
              "generates all permutations of a list", "does binary search on a sorted array",
              "splits a list into chunks of size {k}", "rate-limits calls to at most {k} per second",
              "reads a JSON config file and fills in default values",
              "detects a cycle in a directed graph",
              "finds the shortest path between two nodes in a weighted graph",
              "serializes a binary tree to a string and back",
              "fetches all pages from a REST API that returns {n} items per page",
              "checks if a sudoku board is valid", "computes the Levenshtein distance of two strings",
              "counts how many {entity}s signed up each day", "converts a Unix timestamp to ISO 8601",
              "finds the median of a stream of numbers", "tokenizes a simple arithmetic expression")
SQL_TASKS = ("returns the top {k} {entity}s by total `{col}` per month",
             "finds {entity}s who haven't placed an order in the last {n} days",
             "computes a running total of `{col}` ordered by `created_at`",
             "deletes duplicate rows in `{table}`, keeping the lowest id",
             "counts rows in `{table}` per country and day", "finds the second highest `{col}` in `{table}`",
             "pivots monthly `{col}` totals into one column per month",
             "returns each {entity}'s most recent row in `{table}`")
BASH_TASKS = ("renames all .{ext} files in a folder to lowercase",
              "finds and deletes log files older than {n} days",
              "counts lines in every .{ext} file recursively",
              "backs up a directory into a timestamped tar.gz",
              "alerts when 'ERROR' appears more than {k} times a minute in a log",
              "checks if a list of hosts respond to ping", "downloads {k} URLs in parallel with curl")
CODE_PAIRS = (("let", "var", "JavaScript"), ("==", "===", "JavaScript"), ("a list", "a tuple", "Python"),
              ("an interface", "an abstract class", "Java"), ("a process", "a thread", "Python"),
              ("INNER JOIN", "LEFT JOIN", "SQL"), ("map", "forEach", "JavaScript"), ("String", "&str", "Rust"),
              ("a slice", "an array", "Go"), ("async/await", "threads", "Python"), ("deepcopy", "copy", "Python"),
              ("WHERE", "HAVING", "SQL"), ("a struct", "a class", "C#"), ("null", "undefined", "TypeScript"),
              ("Box", "Rc", "Rust"), ("a pointer", "a reference", "C++"), ("[[ ]]", "[ ]", "Bash"))
CODE_CONSTRAINTS = ("handle empty input and other edge cases", "run in O(n log n) time or better",
                    "use no external libraries", "use explicit types / type hints everywhere",
                    "add docstrings and comments", "include unit tests",
                    "be thread-safe", "stream the input instead of loading it all into memory",
                    "handle inputs of up to {big} elements", "explain the time and space complexity",
                    "be idiomatic for the language", "return errors instead of throwing or panicking",
                    "log failures with enough context to debug", "be split into small testable functions",
                    "avoid recursion (the input can be very deep)", "work on both Linux and Windows",
                    "include a short usage example", "benchmark it against the naive version")
FN_NAMES = ("process", "calc_total", "get_user", "load_data", "parse_row", "handle_event", "avg",
            "merge", "update_cache", "compute_score", "fetch_orders", "clean", "transform", "run_job")
ARG_NAMES = ("items", "nums", "data", "values", "rows", "arr", "xs", "records", "prices", "scores")
TABLES = ("orders", "users", "payments", "events", "products", "invoices", "sessions")
COLS = ("amount", "user_id", "price", "created_at", "email", "quantity", "status", "score", "country")
ENTITIES = ("customer", "user", "employee", "student", "order", "product", "patient")
EXTS = ("txt", "log", "csv", "py", "jpg", "md", "json")
PROJECTS = ("Flask app", "Discord bot", "data pipeline", "React dashboard", "CLI tool", "web scraper",
            "school project", "trading bot", "inventory system", "Django API", "Pygame game",
            "Chrome extension", "microservice", "Airflow DAG")
# (language, fence tag, what it should do, symptom, code)
CODE_SNIPPETS = (
    ("Python", "python", "compute the average of a list", "the result is always a bit off",
     "def {fn}({arg}):\n    total = 0\n    for i in range(1, len({arg})):\n        total += {arg}[i]\n"
     "    return total / len({arg})"),
    ("Python", "python", "collect items across calls", "values from earlier calls leak into new ones",
     "def {fn}(item, {arg}=[]):\n    {arg}.append(item)\n    return {arg}"),
    ("Python", "python", "find the position of a value in a sorted list", "it hangs forever for some inputs",
     "def {fn}({arg}, target):\n    lo, hi = 0, len({arg}) - 1\n    while lo < hi:\n"
     "        mid = (lo + hi) // 2\n        if {arg}[mid] < target:\n            lo = mid\n"
     "        else:\n            hi = mid\n    return lo"),
    ("JavaScript", "js", "sum the prices in a cart", "it returns NaN",
     "function {fn}({arg}) {\n  let total;\n  for (let i = 0; i <= {arg}.length; i++) {\n"
     "    total += {arg}[i].price;\n  }\n  return total;\n}"),
    ("JavaScript", "js", "load users from our API and render them", "the list is always empty",
     "async function {fn}() {\n  let users = [];\n  fetch('/api/{table}')\n    .then(r => r.json())\n"
     "    .then(d => { users = d; });\n  return users;\n}"),
    ("SQL", "sql", "list customers with more than {n} orders", "Postgres gives me an error",
     "SELECT customer_id, COUNT(*) AS n\nFROM {table}\nWHERE COUNT(*) > {n}\nGROUP BY customer_id;"),
    ("Go", "go", "run one worker per job (we're on Go 1.20)", "every goroutine processes the same job",
     "for _, job := range jobs {\n    go func() {\n        {fn}(job)\n    }()\n}"),
    ("Rust", "rust", "append a value based on the first element", "it doesn't compile",
     "fn {fn}(v: &mut Vec<i32>) {\n    let first = &v[0];\n    v.push(*first + {n});\n"
     "    println!(\"{}\", first);\n}"),
    ("Bash", "bash", "copy every file in a folder to a backup dir", "it breaks on filenames with spaces",
     "for f in $(ls {dir}); do\n  cp $f /backup/\ndone"),
    ("Java", "java", "compare two user names", "it says they're different even when they look the same",
     "if (user.getName() == other.getName()) {\n    {fn}(user);\n}"),
    ("TypeScript", "ts", "return the total of numeric fields", "the total is a weird concatenated string",
     "function {fn}(row: Record<string, any>) {\n  let total = 0;\n  for (const k in row) total += row[k];\n"
     "  return total;\n}"),
)
# (language, error line, offending statement or '')
CODE_ERRORS = (
    ("Python", "TypeError: 'NoneType' object is not subscriptable", "result = data['{col}'][0]"),
    ("Python", "KeyError: '{col}'", "value = row['{col}']"),
    ("Python", "IndexError: list index out of range", "last = {arg}[len({arg})]"),
    ("Python", "AttributeError: 'str' object has no attribute 'append'", "{arg}.append(x)"),
    ("Python", "ValueError: invalid literal for int() with base 10: '{n}.5'", "n = int(line)"),
    ("Python", "ZeroDivisionError: division by zero", "avg = total / count"),
    ("Python", "ModuleNotFoundError: No module named 'pandas'", "import pandas as pd"),
    ("Python", "RecursionError: maximum recursion depth exceeded", "return {fn}(n - 1) + {fn}(n - 2)"),
    ("JavaScript", "TypeError: Cannot read properties of undefined (reading 'map')", ""),
    ("JavaScript", "SyntaxError: Unexpected token '<', \"<!DOCTYPE \"... is not valid JSON", ""),
    ("Rust", "error[E0382]: borrow of moved value: `{arg}`", ""),
    ("Go", "panic: runtime error: index out of range [{n}] with length {n}", ""),
    ("Go", "fatal error: all goroutines are asleep - deadlock!", ""),
    ("SQL", "ERROR: column \"{table}.{col}\" must appear in the GROUP BY clause", ""),
    ("Bash", "bash: ./{fn}.sh: Permission denied", ""),
    ("Java", "Exception in thread \"main\" java.lang.NullPointerException", ""),
    ("C++", "Segmentation fault (core dumped)", ""),
)

_PY_ERRORS = tuple(e for e in CODE_ERRORS if e[0] == "Python" and e[2] and "import" not in e[2])

# ----------------------------------------------------------------------------------------------
# math
ITEMS = ("apples", "notebooks", "concert tickets", "coffees", "bags of rice", "t-shirts", "pencils",
         "movie tickets", "cupcakes", "plants")
PROOFS = ("√{p} is irrational", "there are infinitely many primes",
          "the sum of the first n odd numbers is n²",
          "{a}^n - 1 is divisible by {a1} for every positive integer n",
          "every bounded monotone sequence of real numbers converges", "the harmonic series diverges",
          "every graph has an even number of vertices of odd degree", "every group of order {p} is cyclic",
          "n³ - n is divisible by 6 for every integer n",
          "the product of any {k} consecutive integers is divisible by {k}!",
          "there are infinitely many primes of the form 4k + 3",
          "a real symmetric matrix has only real eigenvalues",
          "the set of real numbers is uncountable", "e is irrational")
MATH_CONSTRAINTS = ("show every step", "justify each step rigorously", "state any theorem you use",
                    "give the exact answer and a decimal approximation to 4 places",
                    "check the answer with a second method", "explain where each assumption is used",
                    "write it in LaTeX", "then generalize the result to arbitrary n",
                    "point out the common mistakes students make here",
                    "explain the intuition before the formal argument")

# ----------------------------------------------------------------------------------------------
# writing
SUBJECTS = ("the ocean at night", "autumn leaves", "my cat", "coffee", "a rainy Monday", "first love",
            "the city at dawn", "losing a friend", "mountains", "grief", "a lighthouse", "the moon",
            "starting over", "my grandmother's kitchen", "spring", "insomnia", "a long train ride",
            "my dog", "summer vacation", "the last day of school", "homesickness", "snow")
POEM_FORMS = ("poem", "haiku", "sonnet", "limerick", "free verse poem", "short rhyming poem", "ballad")
POETS = ("Emily Dickinson", "Robert Frost", "Mary Oliver", "Dr. Seuss", "Pablo Neruda", "Rumi",
         "Shakespeare", "Langston Hughes")
EMAILS = (("my landlord", "about a broken heater that hasn't been fixed for {n} weeks"),
          ("my manager", "asking for {n} days off next month"),
          ("a client", "explaining that the project will be {n} days late"),
          ("my professor", "asking for an extension on my essay"),
          ("HR", "negotiating a higher starting salary"),
          ("a customer", "apologizing for a delayed shipment"),
          ("my team", "announcing the new on-call rotation"),
          ("a recruiter", "politely declining a job offer"),
          ("my neighbour", "about their dog barking at night"),
          ("a supplier", "requesting a refund for order #{order}"),
          ("a potential investor", "following up after our pitch meeting"),
          ("my kid's teacher", "about a bullying incident"))
ROLES = ("data analyst", "software engineer", "nurse", "marketing coordinator", "barista",
         "product manager", "graphic designer", "teacher", "customer support specialist",
         "mechanical engineer", "research assistant", "UX researcher", "accountant")
COMPANIES = ("Google", "a local bakery", "Spotify", "a small nonprofit", "Deloitte", "a hospital in Leeds",
             "Acme Corp", "a fintech startup", "Tesla", "the city council", "IKEA", "a law firm")
PRODUCTS = ("a steel water bottle that keeps drinks cold for {n} hours", "noise-cancelling headphones",
            "a handmade lavender soy candle", "an ergonomic office chair", "a budgeting app for students",
            "organic dog treats", "a {n}-piece kitchen knife set", "a self-watering plant pot",
            "a linen summer dress", "a carry-on travel backpack", "a cold brew coffee maker")
PREMISES = ("a robot who learns to paint", "a detective in 1920s Paris", "two strangers stuck in an elevator",
            "a kid who finds a dragon egg", "the last bookstore on Earth",
            "a time traveler who can only go back {n} minutes", "a lighthouse keeper and a strange visitor",
            "an AI that falls in love", "a heist that goes wrong", "a town where it never stops raining",
            "a ghost who is afraid of people")
ESSAYS = ("whether social media does more harm than good", "the impact of remote work on cities",
          "why a {n}-day school week could help students", "the ethics of genetic engineering",
          "universal basic income", "the role of nuclear energy in fighting climate change",
          "whether homework should be banned", "Shakespeare's influence on modern English",
          "why voting should be compulsory", "the future of public libraries")
SPEECHES = ("a best man speech for my brother's wedding", "a toast for my parents' {n}th anniversary",
            "a retirement speech for a colleague who worked here {n} years",
            "a graduation speech for my high school class", "a eulogy for my grandfather")
POSTS = ("a LinkedIn post announcing my new job as a {role}", "an Instagram caption for a photo of {subject}",
         "a tweet about {subject}", "a slogan for a {shop}", "a birthday message for my {rel}")
SHOPS = ("coffee shop", "dog grooming business", "bike repair shop", "vegan bakery", "yoga studio",
         "plumbing company", "bookstore")
DRAFTS = ("hey, we cant make the meeting tmrw, sorry", "The product is good and you should buy it because it is good.",
          "Per my last email, the report is still missing.", "I am writing to tell you that I quit.",
          "our app has lots of features that help people do stuff faster",
          "We regret the inconvenience caused by the outage.", "u still owe me money from the trip btw",
          "The results were not what we expected but we learned things.")
LONG_DRAFTS = (
    "Hi all, just a quick note to say that the {project} launch is delayed again. We had some issues with "
    "the vendor and also a few people were out sick. The new date is probably {day} but I can't promise "
    "anything. Sorry about this, I know it's annoying. Let me know if you have questions or whatever.",
    "I have been working as a {role} for {years} years and I think I am a good fit for this job. I am hard "
    "working and a team player. In my last job I did many projects and I learned a lot of things. I hope "
    "you will consider me because I really want this job and I think I would be good at it.",
    "Our new product is really good. It has many features and it is better than the competition. People "
    "who bought it liked it a lot. It is available now for a limited time at a special price, so you should "
    "buy it now before the offer ends on {day}. You won't regret it, it's the best one on the market.",
    "Dear Sir/Madam, I want to complain about my order #{order}. It came late and the box was damaged and "
    "one item was missing. This is the second time this happened. I want a refund or a replacement. I am "
    "very disappointed and I will not order again if this is not fixed soon.")
WRITING_DETAILS_BIZ = ("my name is {name}", "I'm available from {day}", "we met at a conference in {city}",
                       "the budget is around ${n}k", "mention the {n}% discount running until {month}",
                       "I spent {n} months leading a {project}", "the deadline is the end of {month}",
                       "sign it from the whole team")
WRITING_DETAILS_CREATIVE = ("the main character is called {name}", "it's set in {city} in {month}",
                            "my {rel} loves {hobby}, so mention that", "work in the number {n} as an inside joke",
                            "it should end on a hopeful note", "include the smell of rain somewhere",
                            "keep it suitable for kids")
WRITING_CONSTRAINTS = ("keep it around {w} words", "use a {tone} tone", "aim it at {audience}",
                       "avoid clichés like \"{cliche}\"", "use British spelling", "don't use the word \"{banned}\"",
                       "open with a strong hook", "keep the reading level around grade {k}",
                       "give me a few different versions", "make it sound like a human wrote it, not an AI")
WRITING_CONSTRAINTS_BIZ = ("end with a clear call to action", "organize it into {k} sections with headings",
                           "keep paragraphs to 2-3 sentences",
                           "back every claim with a concrete number or example", "put a one-line summary first")
WRITING_CONSTRAINTS_CREATIVE = ("write it in the second person", "keep everything in the present tense",
                                "include at least one line of dialogue", "make the ending land emotionally",
                                "show, don't tell", "end with a twist the reader won't see coming")
AUDIENCES = ("busy executives", "teenagers", "first-time home buyers", "non-native English speakers",
             "hiring managers", "parents of young kids", "software developers", "retirees")
CLICHES = ("in today's fast-paced world", "think outside the box", "at the end of the day",
           "game-changer", "a journey", "unlock your potential")
WRITING_CONTEXT = ("I'm a {role} with {years} years of experience.", "English isn't my first language.",
                   "I've already sent two reminders and got no reply.", "The deadline was last {day}.",
                   "This person is quite senior and I don't want to sound rude.",
                   "It's for a {audience_s} audience.", "My last draft sounded way too stiff.",
                   "I only have about {n} minutes before I need to send it.",
                   "My teacher said my writing is too repetitive.",
                   "We're a small team of {n} people and this matters a lot to us.")

# ----------------------------------------------------------------------------------------------
# knowledge
CONCEPTS = ("inflation", "compound interest", "opportunity cost", "quantum entanglement", "photosynthesis",
            "CRISPR", "general relativity", "entropy", "black holes", "quantitative easing",
            "intermittent fasting", "the immune system", "feudalism", "blockchain", "machine learning",
            "plate tectonics", "cholesterol", "utilitarianism", "supply and demand", "the greenhouse effect",
            "natural selection", "the Marshall Plan", "dark matter", "the placebo effect", "game theory",
            "the Big Bang", "gerrymandering", "herd immunity", "the gold standard", "cognitive dissonance")
PEOPLE = ("Napoleon Bonaparte", "Marie Curie", "Nikola Tesla", "Genghis Khan", "Ada Lovelace", "Cleopatra",
          "Mansa Musa", "Alan Turing", "Frida Kahlo", "Simón Bolívar", "Catherine the Great", "Confucius",
          "Nelson Mandela", "Rosalind Franklin", "Otto von Bismarck", "Ibn Battuta")
COUNTRIES = ("Australia", "Canada", "Brazil", "Kazakhstan", "Nigeria", "Turkey", "New Zealand",
             "Switzerland", "Myanmar", "Bolivia", "Vietnam", "Morocco", "Norway", "Chile")
EVENTS = ("the French Revolution", "World War I", "the fall of the Berlin Wall", "the Black Death",
          "the Cuban Missile Crisis", "the 2008 financial crisis", "the Meiji Restoration",
          "the Bronze Age collapse", "the Industrial Revolution", "the Partition of India",
          "the fall of Constantinople", "the Apollo 11 landing", "the Great Depression", "the Reformation")
KNOW_PAIRS = (("weather", "climate"), ("a virus", "a bacterium"), ("stocks", "bonds"), ("mitosis", "meiosis"),
              ("nuclear fission", "nuclear fusion"), ("an alligator", "a crocodile"),
              ("monetary policy", "fiscal policy"), ("type 1", "type 2 diabetes"), ("socialism", "communism"),
              ("speed", "velocity"), ("a Roth IRA", "a traditional IRA"), ("DNA", "RNA"),
              ("baking soda", "baking powder"), ("an ETF", "a mutual fund"), ("the UK", "Great Britain"),
              ("an epidemic", "a pandemic"), ("latitude", "longitude"), ("a recession", "a depression"),
              ("an asteroid", "a comet"), ("a psychologist", "a psychiatrist"))
PHENOMENA = ("is the sky blue", "do we have seasons", "do onions make you cry", "does ice float",
             "do cats purr", "is the ocean salty", "did the Roman Empire fall", "do planes leave contrails",
             "do we dream", "does time slow down near a black hole", "do leaves change color in autumn",
             "do we get goosebumps", "is Venus hotter than Mercury", "does bread go stale")
MECHANISMS = ("vaccines", "GPS", "the stock market", "a nuclear reactor", "the heart", "credit scores",
              "noise-cancelling headphones", "an electric car battery", "the electoral college",
              "antibiotics", "tides", "a mortgage", "the kidneys", "interest rates", "a 3D printer")
CONDITIONS = ("iron deficiency", "migraine", "Lyme disease", "vitamin D deficiency", "sleep apnea",
              "burnout", "dehydration", "long COVID", "celiac disease", "anemia")
ASPECTS = ("causes", "economic impact", "underlying mechanism", "risks", "historical context", "costs",
           "long-term consequences", "quality of the evidence", "environmental impact", "public perception")
KNOW_EASY = ("what is {concept}", "who was {person}", "capital of {country}", "when did {event} happen?",
             "{concept}?", "what is {concept}?", "why {phen}", "{x} vs {y}", "population of {country}",
             "who was {person}?", "what language do they speak in {country}", "tell me about {person}",
             "fun facts about {country}", "{concept} meaning", "define {concept}", "how does {mech} work",
             "symptoms of {cond}", "is {x} the same as {y}?", "{person} facts", "what currency does {country} use",
             "biggest city in {country}?", "where is {country}", "how long did {event} last")
KNOW_MED = ("Explain {concept} in simple terms.", "What is the difference between {x} and {y}?", "Why {phen}?",
            "How does {mech} work?", "What caused {event}?", "What are the symptoms of {cond}?",
            "Can you explain {concept} like I'm {age}?", "What was {person} known for?",
            "Why is {concept} important?", "What happened during {event}?",
            "How did {event} affect ordinary people?", "Is it true that {x} and {y} are basically the same?",
            "What causes {cond}, and how is it usually treated?", "Why was {person} so influential?",
            "What's the history of {country} in a nutshell?", "Can you give me a quick summary of {event}?",
            "How do scientists actually know about {concept}?", "How are {x} and {y} different, in plain English?")
KNOW_LEADS = ("", "", "", "Quick question: ", "I was wondering: ", "Serious question. ",
              "My kid asked me this and I didn't know. ", "Random thought: ", "For a school project: ")
KNOW_CONSTRAINTS = ("cite your sources", "put the key facts in a table", "mention where experts disagree",
                    "pitch it at an undergraduate level", "include key dates", "keep it under {w} words",
                    "give a concrete real-world example", "separate established facts from speculation",
                    "end with a short summary", "flag any common misconceptions")

# ----------------------------------------------------------------------------------------------
# chat
GREETINGS = ("hi", "hey", "hello", "yo", "hiya", "good morning", "morning", "hey there", "hi there",
             "sup", "good evening", "howdy", "heyy", "helloo", "hey hey")
GREET_FOLLOW = ("", "", "how are you?", "how r u", "whats up", "how's it going", "how are you today?",
                "you there?", "how's your day", "long time no see", "what's new", "nice to meet you")
GREET_END = ("", "!", " :)", "!!", " 👋", "?", " 😊", ".")
CHAT_EASY = ("im bored", "tell me a joke", "lol", "thanks!", "thank you so much", "good night",
             "i'm so tired today", "what's your name?", "are you a robot?", "do you like {thing}?",
             "tell me a fun fact", "say something funny", "i'm sad", "ok cool", "whats your favorite {fav}",
             "do you dream?", "i love you", "you're funny", "can we just talk", "entertain me",
             "rate my name: {name}", "happy {day}!", "guess what", "i'm hungry")
THINGS = ("music", "pizza", "cats", "dogs", "movies", "coffee", "anime", "jazz", "rain", "math", "football")
FAVS = ("movie", "color", "food", "book", "season", "song", "animal", "band", "emoji", "word")
JOKE_TOPICS = ("cats", "programmers", "accountants", "pirates", "coffee", "dentists", "mondays", "math",
               "penguins", "my job", "dads", "the gym")
MEDIA = (("movie", "Inception"), ("book", "The Hunger Games"), ("show", "Breaking Bad"),
         ("game", "Stardew Valley"), ("anime", "Attack on Titan"), ("podcast", "Serial"),
         ("album", "Rumours"), ("show", "The Office"))
OPINIONS = ("pineapple on pizza", "remote work", "AI art", "tipping culture", "working out in the morning",
            "cats vs dogs", "the ending of Game of Thrones", "social media", "living in a big city")
FEELINGS = (("lonely", "all my friends moved away"), ("stressed", "exams start next week"),
            ("anxious", "i have a job interview tomorrow"), ("happy", "i finally passed my driving test"),
            ("unmotivated", "nothing at work feels meaningful"), ("nervous", "i have a first date tonight"),
            ("sad", "my dog is getting old"), ("overwhelmed", "i moved to a new city"))
DILEMMAS = (("dating someone", "they never text first", "wait it out", "talk to them about it directly"),
            ("at the same job", "I feel like I'm not growing", "stay for the stability", "quit and freelance"),
            ("living with a roommate", "they never clean up", "move out", "set up a chore chart"),
            ("learning guitar", "I'm not improving at all", "get a teacher", "give up and try piano"),
            ("saving for a house", "my friends keep inviting me on expensive trips", "say no to everything",
             "go on one trip a year"),
            ("studying medicine", "I'm completely burnt out", "take a gap year", "push through"),
            ("in a long distance relationship", "we keep fighting on the phone", "move to their city",
             "take a break"))
HOBBIES = ("running", "painting", "chess", "baking", "photography", "rock climbing", "knitting", "gaming",
           "gardening", "yoga", "surfing", "journaling", "skateboarding", "birdwatching")
CHAT_MED = ("tell me a joke about {joke}", "can you recommend a {kind} like {title}? I loved it",
            "what do you think about {opinion}?", "i feel {feel} because {reason}. can we talk for a bit",
            "i can't sleep, it's {hour}am. any tips?", "what should i cook tonight? i have {ings}",
            "would you rather {wa} or {wb}? why", "my {rel} forgot my birthday. should i say something?",
            "give me something fun to do on a rainy {day}",
            "what should i get my {rel} for their birthday? they love {hobby}", "any tips for getting into {hobby}?",
            "is it weird that i {weird}?", "how do i make friends in {city}? i just moved here",
            "what should i name my new {pet}?", "i'm thinking about picking up {hobby}, good idea?",
            "how do i stay motivated when {reason}?", "be honest, is {opinion} overrated?")
CHAT_LEADS = ("", "", "", "hey ", "ok random question, ", "so ", "lol ", "honestly ", "quick one: ")
WEIRD = ("eat cereal for dinner", "talk to my plants", "still sleep with a stuffed animal", "hate birthdays",
         "rewatch the same show over and over", "prefer being alone", "name my houseplants")
PETS = ("cat", "puppy", "goldfish", "hamster", "parrot", "bunny", "turtle")
INGREDIENTS = ("eggs", "rice", "spinach", "chicken", "pasta", "tomatoes", "cheese", "beans", "tofu", "potatoes")
FEARS = ("sounding needy", "hurting their feelings", "making it awkward", "looking ungrateful",
         "starting a fight", "burning bridges")

# ----------------------------------------------------------------------------------------------
# translation
TARGET_LANGS = ("French", "German", "Spanish", "Japanese", "Italian", "Portuguese", "Chinese", "Korean",
                "Dutch", "Russian", "Arabic", "Hindi", "Polish", "Turkish", "Swedish", "Greek")
FORMAL = {"French": "vous", "German": "Sie", "Spanish": "usted", "Italian": "Lei", "Dutch": "u",
          "Russian": "Вы", "Polish": "Pan/Pani", "Turkish": "siz", "Japanese": "keigo",
          "Korean": "존댓말", "Portuguese": "o senhor / a senhora"}
NON_LATIN = ("Japanese", "Chinese", "Korean", "Russian", "Arabic", "Hindi", "Greek")
PHRASES = ("thank you", "good morning", "where is the bathroom", "I love you", "cheers",
           "how much does this cost", "nice to meet you", "happy birthday", "excuse me", "I don't understand",
           "see you tomorrow", "the bill, please", "good luck", "welcome", "I'm sorry", "congratulations")
SENTENCES = ("Where is the nearest {place}?", "I would like to book a table for {n} people at {time}.",
             "The meeting has been moved to {day} at {time}.", "Could you tell me how to get to the {place}?",
             "My flight to {city} was cancelled and I need a new ticket.",
             "We are happy to announce that our new store opens on {day}.",
             "I'm allergic to {food}. Does this dish contain any?", "Please find attached the invoice for {month}.",
             "The package should arrive within {n} business days.", "I've been learning {lang} for {n} months.",
             "Can I pay by card?", "Our office will be closed from {day} until further notice.",
             "Is this seat taken?", "My name is {name} and I'm from {city}.",
             "It was raining so we stayed home and watched movies.", "How long does it take to walk to the {place}?")
PLACES = ("train station", "pharmacy", "museum", "supermarket", "hospital", "bus stop", "beach", "hotel")
FOODS = ("peanuts", "shellfish", "gluten", "milk", "eggs", "sesame")
FOREIGN = (("Spanish", "¿Dónde está la estación de tren más cercana?"),
           ("Spanish", "Mañana vamos a la playa con mis primos."),
           ("French", "Je voudrais réserver une chambre pour deux nuits, s'il vous plaît."),
           ("French", "Il pleut depuis ce matin et je n'ai pas de parapluie."),
           ("German", "Ich habe meinen Schlüssel im Büro vergessen."),
           ("German", "Könnten Sie mir bitte die Rechnung schicken?"),
           ("Italian", "Non vedo l'ora di rivederti la prossima estate."),
           ("Portuguese", "Obrigado pela ajuda, você foi muito gentil."),
           ("Japanese", "駅はどこですか？"), ("Japanese", "明日の会議は十時に始まります。"),
           ("Chinese", "我明天要去北京出差。"), ("Dutch", "Ik ben op zoek naar een appartement in het centrum."),
           ("Russian", "Я не понимаю, что вы имеете в виду."), ("Korean", "오늘 날씨가 정말 좋네요."),
           ("Spanish", "Lamentamos informarle que su pedido ha sido retrasado."),
           ("French", "Merci de confirmer votre présence avant vendredi."))
FORMAL_SENTENCES = (
                    "Pursuant to Section {n} of the Agreement, the Supplier shall deliver the goods "
                    "no later than {day}.",
                    "Any dispute arising from this contract shall be settled by arbitration in {city}.",
                    "To reset the device, hold the power button for {n} seconds until the LED flashes blue.",
                    "Patients should not take more than {n} tablets within 24 hours.",
                    "We regret to inform you that your application was not successful on this occasion.",
                    "The firmware update improves battery life by up to {n}% and fixes several connectivity issues.",
                    "Please ensure that all personal data is processed in accordance with the GDPR.",
                    "Our quarterly revenue increased by {n}% compared to the same period last year.",
                    "The tenant is responsible for minor repairs costing less than {n} euros.",
                    "Side effects may include dizziness, nausea and, in rare cases, allergic reactions.",
                    "Guests are kindly requested to vacate their rooms by {time} on the day of departure.",
                    "{product} is now available in {n} countries, with free shipping on all orders.")
TRANSLATION_CONSTRAINTS = ("keep the formal register", "preserve the formatting and line breaks",
                           "don't translate the product name \"{product}\"",
                           "localize dates, currencies and units for {lang}-speaking readers",
                           "give two alternative translations and explain the difference in nuance",
                           "prioritize accuracy over fluency, it's for a legal document",
                           "flag anything that's ambiguous in the source",
                           "explain any idioms you had to adapt")
BRANDS = ("Zentra", "Luma Pro", "FreshNest", "Orbit X", "Kiwi Pay", "Nordlicht")
UI_STRINGS = (("login", "Log in"), ("forgot", "Forgot your password?"), ("cart", "Your cart is empty"),
              ("save", "Save changes"), ("welcome", "Welcome back, {name}!"), ("logout", "Sign out"),
              ("error", "Something went wrong. Please try again."), ("items", "{n} items selected"))


# ----------------------------------------------------------------------------------------------
# helpers
# rng.random() is ~10x cheaper than rng.integers(); 30k prompts must generate in well under a second.
def _pick(rng: np.random.Generator, seq):  # noqa: ANN001, ANN202 - any sequence
    return seq[int(rng.random() * len(seq))]


def _picks(rng: np.random.Generator, seq, k: int) -> list:  # noqa: ANN001
    """k distinct items in random order."""
    return [seq[int(i)] for i in np.argsort(rng.random(len(seq)), kind="stable")[: max(0, k)]]


def _chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _num(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    return lo + int(rng.random() * (hi - lo + 1))


_SLOT_RE = re.compile(r"\{(\w+)\}")
# "a enthusiastic email" -> "an ..."; "a eulogy", "a one-liner", "a user" stay. Not applied to translation
# prompts, whose foreign-language source text must be left untouched.
_AN_RE = re.compile(r"\b([Aa]) (?=[aioAIO]|[eE](?![uU]))(?!one)")


def _fill(template: str, **slots: object) -> str:
    """Replace ``{key}`` for the given keys only, so code braces in templates survive."""
    return _SLOT_RE.sub(lambda m: str(slots[m.group(1)]) if m.group(1) in slots else m.group(0), template)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _tier(rng: np.random.Generator, d: float) -> int:
    """0 easy, 1 medium, 2 hard; noisy so neighbouring difficulties share templates."""
    x = d + rng.normal(0.0, 0.08)
    return 0 if x < 0.35 else (2 if x > 0.67 else 1)


def _ask(rng: np.random.Generator, core: str) -> str:
    text = _cap(_fill(_pick(rng, ASK_FORMS), c=core))
    return text.removesuffix(".") if text.endswith('".') else text


_SLOT_TABLE: tuple[tuple[str, Sequence[object]], ...] = (
    ("n", range(2, 61)), ("k", range(3, 11)), ("big", ("10^5", "10^6", "a million", "50k")),
    ("col", COLS), ("table", TABLES), ("entity", ENTITIES), ("ext", EXTS), ("fn", FN_NAMES),
    ("arg", ARG_NAMES), ("dir", ("$DIR", "~/Downloads", "./data", "$1")), ("name", NAMES),
    ("w", (100, 150, 200, 250, 300, 400, 500, 800, 1000, 1500)), ("tone", TONES), ("audience", AUDIENCES),
    ("audience_s", ("general", "technical", "young")), ("cliche", CLICHES),
    ("banned", ("very", "delve", "journey", "passionate")), ("day", DAYS), ("role", ROLES),
    ("order", range(10000, 100000)), ("subject", SUBJECTS), ("rel", RELATIONS), ("shop", SHOPS),
    ("city", CITIES), ("month", MONTHS), ("place", PLACES), ("food", FOODS),
    ("time", tuple(f"{h}:{m}" for h in range(6, 12) for m in ("00", "15", "30", "45"))),
    ("product", BRANDS), ("thing", THINGS), ("fav", FAVS), ("concept", CONCEPTS), ("person", PEOPLE),
    ("country", COUNTRIES),
    ("event", EVENTS), ("phen", PHENOMENA), ("mech", MECHANISMS), ("cond", CONDITIONS), ("joke", JOKE_TOPICS),
    ("opinion", OPINIONS), ("hobby", HOBBIES), ("age", range(5, 16)), ("years", range(1, 21)), ("hour", (1, 2, 3, 4)),
)

_SLOT_LENS = np.array([len(vals) for _, vals in _SLOT_TABLE], dtype=np.float64)


def _slots(rng: np.random.Generator) -> dict[str, object]:
    """A shared bag of slot values (one vectorised draw); templates use whichever keys they mention."""
    idx = (rng.random(len(_SLOT_TABLE)) * _SLOT_LENS).astype(np.int64).tolist()
    return {key: vals[i] for (key, vals), i in zip(_SLOT_TABLE, idx, strict=True)}


def _requirements(rng: np.random.Generator, pool: tuple[str, ...], n: int, slots: dict[str, object]) -> str:
    """Render ``n`` constraints from ``pool`` as a bullet list or as one sentence."""
    items = [_fill(c, **{**slots, "n": _num(rng, 2, 60)}) for c in _picks(rng, pool, n)]
    if not items:
        return ""
    if len(items) >= 3 or _chance(rng, 0.3):
        numbered = _chance(rng, 0.35)
        lines = [f"{i + 1}. {_cap(c)}" if numbered else f"- {_cap(c)}" for i, c in enumerate(items)]
        return _pick(rng, REQ_LEADS) + "\n" + "\n".join(lines)
    return f"{_pick(rng, PROSE_LEADS)} {_join(items)}."


def _casual(rng: np.random.Generator, text: str, typo_rate: float) -> str:
    """Lowercase, drop apostrophes and sprinkle keyboard typos, like people typing fast."""
    text = text.lower().replace("'", "").replace("’", "")
    if _chance(rng, 0.4):
        text = text.rstrip(".")
    words = text.split(" ")
    for i, w in enumerate(words):
        if w == "you" and _chance(rng, 0.3):
            words[i] = "u"
        elif len(w) > 3 and w.isalpha() and _chance(rng, typo_rate):
            j = _num(rng, 1, len(w) - 2)
            kind = _num(rng, 0, 2)
            words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:] if kind == 0 else
                        w[:j] + w[j + 1:] if kind == 1 else w[:j] + w[j] + w[j:])
    return " ".join(words)


def _para(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def _then(first: str, second: str) -> str:
    """Append ``second`` as a new sentence (or a new paragraph when it is a list)."""
    if not second:
        return first
    if "\n" in second:
        return _para(first, second)
    return first + ("" if first[-1:] in ".?!:\"" else ".") + " " + second


# ----------------------------------------------------------------------------------------------
# category builders: (rng, difficulty) -> text
def _code_unit(rng: np.random.Generator, lang: str, s: dict[str, object]) -> str:
    if lang == "SQL":
        return _fill(f"write a SQL query that {_pick(rng, SQL_TASKS)}", **s)
    if lang == "Bash":
        return _fill(f"write a bash script that {_pick(rng, BASH_TASKS)}", **s)
    oop = lang in ("Python", "Java", "C#", "C++", "TypeScript", "JavaScript")
    unit = _pick(rng, ("function", "function", "program", "class" if oop else "package", "module"))
    return _fill(f"write a {lang} {unit} that {_pick(rng, CODE_TASKS)}", **s)


def _code(rng: np.random.Generator, d: float) -> str:
    s, lang, tier = _slots(rng), _pick(rng, CODE_LANGS), _tier(rng, d)
    if tier == 0:
        r = rng.random()
        if r < 0.55:
            lang = lang if lang != "SQL" else _pick(rng, ("Python", "JavaScript", "Java"))
            lang_s = lang.lower() if _chance(rng, 0.6) else lang
            return _fill(_pick(rng, CODE_EASY_FORMS), x=_pick(rng, CODE_EASY_TASKS), lang=lang_s)
        if r < 0.8:
            err = _fill(_pick(rng, CODE_ERRORS)[1], **s)
            return _fill(_pick(rng, ("what does {e} mean", "{e}", "{e} ??", "why do i get {e}")), e=err)
        return _fill(_pick(rng, ("what is a {c} in {l}", "what's a {c}?", "{l} {c} example")),
                     c=_pick(rng, CODE_CONCEPTS), l=lang)
    if tier == 1:
        r = rng.random()
        if r < 0.55:
            req = _requirements(rng, CODE_CONSTRAINTS, int(rng.binomial(2, d)), s)
            return _then(_ask(rng, _code_unit(rng, lang, s)), req)
        if r < 0.8:
            elang, err, stmt = _pick(rng, CODE_ERRORS)
            line = f"\n\n    {_fill(stmt, **s)}\n\n" if stmt else " "
            return _fill(f"I'm getting `{err}` in my {elang} code{line}What does it mean and how do I fix it?", **s)
        a, b, plang = _pick(rng, CODE_PAIRS)
        return _fill(_pick(rng, ("What's the difference between {a} and {b} in {l}? When should I use each?",
                                 "{l}: {a} vs {b}, which one is better and why?",
                                 "When would I use {a} instead of {b} in {l}? Examples please")), a=a, b=b, l=plang)
    # hard
    r = rng.random()
    project = _pick(rng, PROJECTS)
    reqs = _requirements(rng, CODE_CONSTRAINTS, 1 + int(rng.binomial(4, d)), s)
    if r < 0.4:
        slang, tag, goal, symptom, code = _pick(rng, CODE_SNIPPETS)
        intro = _fill(f"I'm working on a {project} in {slang}. This is supposed to {goal}, but {symptom}.", **s)
        block = f"```{tag}\n{_fill(code, **s)}\n```"
        ask = _pick(rng, ("Can you find the bug, explain why it happens, and give me a fixed version?",
                          "What's wrong here? Please explain the root cause, not just the fix.",
                          "Fix it and also tell me how I could have caught this with a test."))
        return _para(intro, block, ask, reqs if _chance(rng, 0.6) else "")
    if r < 0.6:
        file = _pick(rng, ("main", "app", "etl", "train", "bot", "server"))
        _, err, stmt = _pick(rng, _PY_ERRORS)
        tb = (f"Traceback (most recent call last):\n  File \"{file}.py\", line {_num(rng, 80, 400)}, in <module>\n"
              f"    main()\n  File \"{file}.py\", line {_num(rng, 10, 79)}, in {{fn}}\n    {stmt}\n{err}")
        intro = f"My {project} crashes after running fine for a while. Full traceback:"
        ask = ("Why does this happen only for some inputs? Explain the cause, show a robust fix, "
               "and suggest how to guard against similar errors elsewhere.")
        return _fill(_para(intro, f"```\n{tb}\n```", ask, reqs), **s)
    if r < 0.85:
        ctx = f"Context: this is for a {project} that handles about {_num(rng, 2, 900)}k requests a day."
        return _para(ctx, _ask(rng, _code_unit(rng, lang, s)), reqs)
    slang, tag, _, _, code = _pick(rng, CODE_SNIPPETS)
    ask = ("What is the time and space complexity of this? Refactor it to be cleaner and faster, "
           f"keep the behaviour identical, and explain each change. It's {slang} in our {project}.")
    return _para(ask, f"```{tag}\n{_fill(code, **s)}\n```", reqs)


def _poly(coeffs: list[int]) -> str:
    """[a, b, c] -> 'ax^2 + bx + c' with clean signs; zero terms dropped."""
    deg, out = len(coeffs) - 1, []
    for i, c in enumerate(coeffs):
        if c == 0:
            continue
        p = deg - i
        mag = "" if abs(c) == 1 and p > 0 else str(abs(c))
        term = mag + ("" if p == 0 else "x" if p == 1 else f"x^{p}")
        out.append(("- " if c < 0 else "+ ") + term if out else ("-" if c < 0 else "") + term)
    return " ".join(out) or "0"


def _math(rng: np.random.Generator, d: float) -> str:
    tier = _tier(rng, d)
    a, b, c = _num(rng, 2, 99), _num(rng, 2, 99), _num(rng, 2, 40)
    name = _pick(rng, NAMES)
    if tier == 0:
        return _pick(rng, (f"what is {a} times {b}", f"{a}*{b}", f"{a} + {b} * {c} = ?",
                           f"what's {c}% of {a * 10}?", f"{a * c} divided by {c}", f"solve x + {a} = {b}",
                           f"is {a * 2 + 1} a prime number?", f"square root of {c * c}",
                           f"what is {a}/{b} as a decimal", f"round {a}.{b} to the nearest whole number",
                           f"{a} - {b}", f"whats {c} squared"))
    if tier == 1:
        r1, r2, k = _num(rng, -9, 9), _num(rng, -9, 9), _num(rng, 1, 3)
        p, t, rate = _num(rng, 1, 50) * 100, _num(rng, 2, 30), _pick(rng, (2.5, 3, 4, 4.5, 5, 6, 7))
        problems = (
            f"{name} buys {c} {_pick(rng, ITEMS)} at ${a / 10:.2f} each and pays with a "
            f"${_pick(rng, (20, 50, 100))} bill. How much change does {name} get?",
            f"A train travels {a * 5} km in {c // 4 + 1} hours. What is its average speed in km/h?",
            f"If I invest ${p} at {rate}% interest compounded annually, how much will I have after {t} years?",
            f"A recipe needs {c // 4 + 1} cups of flour for {k + 1} servings. "
            f"How much flour do I need for {k + 5} servings?",
            f"Solve for x: {k}x + {a} = {b}",
            f"Solve {_poly([k, -k * (r1 + r2), k * r1 * r2])} = 0",
            f"Factor x^2 {'-' if r1 + r2 > 0 else '+'} {abs(r1 + r2)}x {'-' if r1 * r2 < 0 else '+'} {abs(r1 * r2)}",
            f"Find the derivative of {_poly([k, a % 7, 0])} + {c % 5 + 1}sin(x)",
            f"What is the integral of {_poly([k * 3, 0, a % 9])} dx?",
            f"Find the limit as x -> 0 of sin({c}x)/x",
            f"What's the probability of rolling a sum of {c % 11 + 2} with two fair dice?",
            f"A bag has {c % 9 + 3} red and {a % 7 + 2} blue marbles. If I draw {k + 1} without replacement, "
            "what's the probability they're all red?",
            f"{name} scored {a % 30 + 60}, {b % 30 + 65}, {c + 50} and {a % 20 + 70} on four tests. "
            f"What score is needed on the fifth to average {_pick(rng, (75, 80, 85))}?",
            f"Solve the system: {k}x + {c % 7 + 1}y = {a}, {r2 % 5 + 1}x - y = {b % 20}",
        )
        text = _pick(rng, problems)
        if _chance(rng, 0.5):
            text = _then(text, _pick(rng, ("Show your work.", "Explain step by step.", "Can you explain how?",
                                      "I keep getting a different answer than my textbook.", "thanks!")))
        return text
    s = {"p": _pick(rng, (2, 3, 5, 7, 11, 13, 17)), "a": a % 9 + 2, "a1": a % 9 + 1, "k": c % 5 + 2}
    n_req = 1 + int(rng.binomial(3, d))
    req = _requirements(rng, MATH_CONSTRAINTS, n_req, {})
    r = rng.random()
    lo, hi = -_num(rng, 1, 5), _num(rng, 2, 6)
    if r < 0.4:
        intro = _pick(rng, ("", "I'm preparing for a real analysis exam.",
                            "This is from my discrete math problem set.",
                            "My professor left this as an exercise and I'm stuck."))
        core = _fill(f"Prove that {_pick(rng, PROOFS)}.", **s)
        extra = _pick(rng, ("", "Then explain why the argument fails if we drop one of the hypotheses.",
                            "Is there a proof that avoids contradiction?"))
        return _para(" ".join(x for x in (intro, core, extra) if x), req)
    if r < 0.65:
        f = _poly([1, -(a % 5), -(b % 9 + 1), c % 7])
        parts = ("(a) Find all critical points of f.", "(b) Classify each one using the second derivative test.",
                 f"(c) Find the absolute maximum and minimum of f on [{lo}, {hi}].",
                 "(d) Sketch f and mark the inflection points.", "(e) How many real roots does f have? Justify.")
        return _para(f"Let f(x) = {f}.", "\n".join(parts[: 3 + int(rng.binomial(2, d))]), req)
    if r < 0.8:
        m = [_num(rng, -4, 6) for _ in range(4)]
        return _para(f"Find the eigenvalues and eigenvectors of the matrix A = [[{m[0]}, {m[1]}], [{m[2]}, {m[3]}]]. "
                     "Is A diagonalizable? If so, write A = PDP^-1 and use it to compute A^10.", req)
    if r < 0.9:
        return _para(f"A farmer has {a * 20} meters of fencing and wants to enclose a rectangular field along a "
                     f"straight river (no fence needed on the river side). The field must also be split into "
                     f"{s['k']} equal pens by fences parallel to the river's perpendicular side. What dimensions "
                     "maximize the total area? Use calculus and verify it is a maximum.", req)
    return _para(f"Evaluate the integral ∫_0^∞ x^{s['k']} e^(-{s['a']}x) dx and prove that it converges. "
                 f"Then find a closed form for ∫_0^∞ x^n e^(-ax) dx for integer n ≥ 0 and a > 0.", req)


def _writing_core(rng: np.random.Generator, kind: int, s: dict[str, object]) -> str:
    if kind == 0:
        rec, purpose = _pick(rng, EMAILS)
        return _fill(f"write a {{tone}} email to {rec} {purpose}", **s)
    if kind == 1:
        return _fill(f"write a cover letter for a {{role}} position at {_pick(rng, COMPANIES)}", **s)
    if kind == 2:
        form, poet = _pick(rng, POEM_FORMS), _pick(rng, POETS)
        style = f" in the style of {poet}" if _chance(rng, 0.3) else ""
        return _fill(f"write a {form} about {{subject}}{style}", **s)
    if kind == 3:
        return _fill(f"write a short story about {_pick(rng, PREMISES)}", **s)
    if kind == 4:
        return _fill(f"write an essay on {_pick(rng, ESSAYS)}", **s)
    if kind == 5:
        return _fill(f"write a product description for {_pick(rng, PRODUCTS)}", **s)
    if kind == 6:
        return _fill(f"write {_pick(rng, SPEECHES)}", **s)
    if kind == 7:
        return _fill(f"write {_pick(rng, POSTS)}", **s)
    return _fill(f"rewrite this to sound more {{tone}}: \"{_pick(rng, DRAFTS)}\"", **s)


def _writing(rng: np.random.Generator, d: float) -> str:
    s, tier, kind = _slots(rng), _tier(rng, d), _num(rng, 0, 8)
    core, biz = _writing_core(rng, kind, s), kind in (0, 1, 4, 5, 7, 8)
    pool = WRITING_CONSTRAINTS + (WRITING_CONSTRAINTS_BIZ if biz else WRITING_CONSTRAINTS_CREATIVE)
    if kind == 4:
        pool += ("include a counterargument and a rebuttal", "cite at least {k} sources")
    if tier == 0:
        if core.startswith("write ") and _chance(rng, 0.4):  # bare "poem about the moon"
            text = core.removeprefix("write ").removeprefix("a ").removeprefix("an ") + _pick(rng, ("", " pls", "?"))
        else:
            text = core if _chance(rng, 0.4) else _ask(rng, core)
        return _casual(rng, text, 0.03) if _chance(rng, 0.4) else text
    if tier == 1:
        req = _requirements(rng, pool, int(rng.binomial(2, d)), s)
        return _then(_ask(rng, core), req)
    ctx = " ".join(_fill(c, **s) for c in _picks(rng, WRITING_CONTEXT, 1 + int(rng.binomial(2, d))))
    req = _requirements(rng, pool, 2 + int(rng.binomial(4, d)), s)
    extra = ""
    if kind == 8:
        core = _fill("rewrite my draft below so it sounds more {tone} and reads better", **s)
        draft = _fill(_pick(rng, LONG_DRAFTS), project=_pick(rng, PROJECTS), **s)
        extra = f"Here's the draft, feel free to restructure it completely:\n\n\"{draft}\""
    elif kind != 4 and _chance(rng, 0.3 + 0.4 * d):
        details = [_fill(x, **{**s, "project": _pick(rng, PROJECTS), "n": _num(rng, 2, 60)}) for x in _picks(
            rng, WRITING_DETAILS_BIZ if biz else WRITING_DETAILS_CREATIVE, 2 + int(rng.binomial(2, d)))]
        extra = "Some details to work in: " + "; ".join(details) + "."
    return _para(ctx, _ask(rng, core), extra, req)


def _knowledge(rng: np.random.Generator, d: float) -> str:
    s, tier = _slots(rng), _tier(rng, d)
    concept, event = s["concept"], s["event"]
    x, y = _pick(rng, KNOW_PAIRS)
    if tier == 0:
        text = _fill(_pick(rng, KNOW_EASY), x=x, y=y, **s)
        return text if _chance(rng, 0.7) else _cap(text)
    if tier == 1:
        text = _pick(rng, KNOW_LEADS) + _fill(_pick(rng, KNOW_MED), x=x, y=y, **s)
        if _chance(rng, 0.4):
            text += " " + _cap(_fill(_pick(rng, KNOW_CONSTRAINTS), **s)) + "."
        return text
    a = _picks(rng, ASPECTS, 2 + int(rng.binomial(2, d)))
    req = _requirements(rng, KNOW_CONSTRAINTS, 1 + int(rng.binomial(3, d)), s)
    r = rng.random()
    if r < 0.35:
        return _para(f"Compare {x} and {y} in terms of {_join(a)}.", req)
    if r < 0.7:
        subs = (f"What is the core idea behind {concept}, and where did it come from?",
                f"How is {concept} measured or tested in practice?",
                f"What are the strongest criticisms of {concept}?",
                f"How does it relate to {_pick(rng, CONCEPTS)}?",
                "What do most introductory textbooks get wrong about it?")
        k = 2 + int(rng.binomial(3, d))
        intro = _pick(rng, ("I'm studying for an exam and want to really understand this.",
                            "I'm writing a report and need a rigorous overview.",
                            "I keep reading contradictory things online."))
        return _para(intro, "\n".join(f"{i + 1}. {q}" for i, q in enumerate(subs[:k])), req)
    return _para(f"Give me a detailed, well-structured overview of {event}: its {_join(a)}, the key figures "
                 "involved and how historians' interpretations have changed.",
                 req)


def _chat(rng: np.random.Generator, d: float) -> str:
    s, tier = _slots(rng), _tier(rng, d)
    if tier == 0:
        if _chance(rng, 0.5):
            text = _pick(rng, GREETINGS)
            if _chance(rng, 0.15):
                text += " " + _pick(rng, ("buddy", "bot", "friend", "chatgpt", "mate"))
            follow = _pick(rng, GREET_FOLLOW)
            text = text + (", " if _chance(rng, 0.5) else " ") + follow if follow else text
        else:
            text = _fill(_pick(rng, CHAT_EASY), **s)
            if _chance(rng, 0.3):
                text = _pick(rng, ("hey ", "hi, ", "ok ", "ugh ", "lol ", "so ", "hmm ")) + text
        if text[-1] not in "?!.":
            text += _pick(rng, GREET_END)
        return _cap(text) if _chance(rng, 0.35) else _casual(rng, text, 0.08)
    if tier == 1:
        (feel, reason), (kind, title) = _pick(rng, FEELINGS), _pick(rng, MEDIA)
        text = _pick(rng, CHAT_LEADS) + _fill(
            _pick(rng, CHAT_MED), feel=feel, reason=reason, kind=kind, title=title, weird=_pick(rng, WEIRD),
            pet=_pick(rng, PETS), ings=_join(_picks(rng, INGREDIENTS, 3)),
            wa=_pick(rng, ("fly", "be invisible", "read minds", "never sleep")),
            wb=_pick(rng, ("time travel", "teleport", "talk to animals", "never be hungry")), **s)
        return _casual(rng, text, 0.05) if _chance(rng, 0.6) else _cap(text)
    sit, comp, opt_a, opt_b = _pick(rng, DILEMMAS)
    n, unit = _num(rng, 2, 11), _pick(rng, ("months", "weeks", "years"))
    sents = [_pick(rng, ("ok so this is kind of long.", "So here's the thing.", "I need some honest advice.",
                         "not sure if you can help with this but")),
             f"I've been {sit} for about {n} {unit} and {comp}.",
             f"My {_pick(rng, RELATIONS)} says I should {opt_a}, but honestly part of me wants to {opt_b}."]
    extra = ("I've already tried talking to a friend about it but it didn't really help.",
             "Money is also a bit tight right now, which makes everything harder.",
             "I also tend to overthink everything, so maybe I'm blowing this out of proportion.",
             "Part of me thinks I'm just scared of change.")
    sents += _picks(rng, extra, int(rng.binomial(3, d)))
    sents.append(f"What would you do in my position? And how do I bring it up without {_pick(rng, FEARS)}?")
    if _chance(rng, 0.4):
        sents.append(_pick(rng, ("Please be honest, not just nice.", "Give me pros and cons for both options.",
                                 "Keep it real with me.")))
    text = " ".join(sents)
    return _casual(rng, text, 0.03) if _chance(rng, 0.35) else text


def _translation(rng: np.random.Generator, d: float) -> str:
    s, tier = _slots(rng), _tier(rng, d)
    lang = _pick(rng, TARGET_LANGS)
    s["lang"] = lang
    if tier == 0:
        if _chance(rng, 0.2):
            return f"what does '{_pick(rng, FOREIGN)[1]}' mean"
        form = _pick(rng, ("translate '{p}' to {l}", "how do you say {p} in {l}", "{p} in {l}",
                           "{l} for \"{p}\"?", "how to say {p} in {l}", "translate {p} into {l}"))
        text = _fill(form, p=_pick(rng, PHRASES), l=lang if _chance(rng, 0.5) else lang.lower())
        return _cap(text) if _chance(rng, 0.3) else text
    if tier == 1:
        if _chance(rng, 0.3):
            src, sent = _pick(rng, FOREIGN)
            target = "English" if _chance(rng, 0.75) else lang
            return _pick(rng, (f"Translate from {src} to {target}: {sent}",
                               f"What does this mean in {target}? \"{sent}\"",
                               f"{sent}\n\ntranslate to {target.lower()} please"))
        sent = _fill(_pick(rng, SENTENCES), **s)
        text = _pick(rng, (f"Translate into {lang}: \"{sent}\"", f"Can you translate this to {lang}? {sent}",
                           f"How would I say \"{sent}\" in {lang}?", f"{lang} please: {sent}"))
        if _chance(rng, 0.35):
            text += " " + _pick(rng, ("Keep it casual.", "Formal, please.", "It's for a text to a friend.",
                                      "Is there a more natural way to say it?"))
        return text
    r = rng.random()
    if r >= 0.8:  # foreign messages -> English: constraints refer to English readers
        s["lang"] = "English"
    roman = lang in NON_LATIN and r < 0.8
    pool = TRANSLATION_CONSTRAINTS + (("add a romanization so I can read it aloud",) if roman else ())
    reqs = _requirements(rng, pool, 1 + int(rng.binomial(3, d)), s)
    if lang in FORMAL and "formal register" in reqs and r < 0.8:
        reqs = reqs.replace("formal register", f"formal register ({FORMAL[lang]})")
    if r < 0.6:
        sents = " ".join(_fill(x, **{**s, "n": _num(rng, 2, 60)})
                         for x in _picks(rng, FORMAL_SENTENCES, 2 + int(rng.binomial(3, d))))
        ctx = _pick(rng, ("This is going to a client", "This is part of a user manual",
                          "This is from our terms and conditions", "This is for our company newsletter"))
        return _para(f"{ctx}, so it needs to read naturally for native {lang} speakers. "
                     f"Please translate the following into {lang}:", f"\"{sents}\"", reqs)
    if r < 0.8:
        if _chance(rng, 0.5):
            reqs = _para(reqs, f"Keep each string under {_num(rng, 20, 40)} characters, they go on buttons.")
        keys = _picks(rng, UI_STRINGS, 3 + int(rng.binomial(3, d)))
        body = ",\n".join(f'  "{k}": "{_fill(v, **s)}"' for k, v in keys)
        return _para(f"Translate the values (not the keys) of these UI strings into {lang} "
                     f"for our app {s['product']}.",
                     f"```json\n{{\n{body}\n}}\n```", reqs)
    src_pairs = _picks(rng, FOREIGN, 2 + int(rng.binomial(2, d)))
    lines = "\n".join(f"- {t}" for _, t in src_pairs)
    return _para("I received these messages from colleagues in different countries. Translate them into "
                 "English, then draft short polite replies and translate those back into the original language.",
                 lines, reqs)


_BUILDERS = {"code": _code, "math": _math, "writing": _writing, "knowledge": _knowledge, "chat": _chat,
             "translation": _translation}


def generate_prompt(category: str, rng: np.random.Generator, difficulty: float | None = None) -> GeneratedPrompt:
    """One prompt of ``category``; difficulty None -> drawn from Beta(2, 2) with rng.

    Raises ValueError for an unknown category or a difficulty outside [0, 1].
    """
    builder = _BUILDERS.get(category)
    if builder is None:
        raise ValueError(f"unknown prompt category {category!r}; allowed: {', '.join(CATEGORIES)}")
    if difficulty is None:
        difficulty = float(rng.beta(2.0, 2.0))
    difficulty = float(difficulty)
    if not (math.isfinite(difficulty) and 0.0 <= difficulty <= 1.0):
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty!r}")
    text = builder(rng, difficulty).strip()
    if category != "translation":
        text = _AN_RE.sub(r"\1n ", text)
    return GeneratedPrompt(text=text, category=category, difficulty=difficulty)
