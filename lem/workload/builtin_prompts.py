"""lem's own built-in prompt set: a few hundred requests from short questions to long briefs.

Every prompt is composed deterministically from the templates, topics and passages in
this file, all written for lem (no external dataset is copied). The set mixes five kinds
of request so that input lengths spread from about 10 to about 360 words:

- short questions (about 10-20 words),
- medium instructions with an audience and constraints (30-65 words),
- programming tasks (25-40 words),
- long briefs: a numbered list of requirements (100-290 words),
- reading tasks: one to three short documents followed by a task (120-360 words).

The order is fixed and mixes the kinds, so the first n prompts are already varied.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import zip_longest

TOPICS: tuple[str, ...] = (
    "photosynthesis",
    "the water cycle",
    "compound interest",
    "plate tectonics",
    "how vaccines train the immune system",
    "the printing press",
    "supply and demand",
    "black holes",
    "the French Revolution",
    "machine translation",
    "recycling plastics",
    "sleep and memory",
    "the stock market",
    "coral reefs",
    "electric cars",
    "Roman aqueducts",
    "inflation",
    "honeybees",
    "solar panels",
    "the human heart",
    "adapting cities to heat waves",
    "how data travels across the internet",
    "antibiotic resistance",
    "volcanoes",
    "public libraries",
    "the Silk Road",
    "quantum computing",
    "urban gardening",
    "earthquakes",
    "the theory of evolution",
    "composting",
    "the first moon landing",
    "public-key cryptography",
    "storing renewable energy",
    "bird migration",
    "the placebo effect",
    "3D printing",
    "ocean tides",
    "the history of tea",
    "how bridges carry loads",
    "weather forecasting",
    "the periodic table",
    "jazz improvisation",
    "the metric system",
    "tropical rainforests",
    "attention and social media",
    "nuclear fusion",
    "the chemistry of bread",
)

AUDIENCES: tuple[str, ...] = (
    "a ten-year-old",
    "a busy manager with five minutes to spare",
    "a first-year university student",
    "a retired engineer",
    "a class of high-school students",
    "a journalist on a deadline",
    "someone who is learning English",
    "a skeptical friend",
)

SHORT_TEMPLATES: tuple[str, ...] = (
    "What is {topic}, and why does it matter in everyday life?",
    "Explain {topic} in two sentences for someone who has never heard of it.",
    "Give three facts about {topic} that most people get wrong.",
    "Is {topic} more important today than it was fifty years ago? Answer briefly and give one reason.",
    "In plain words, what is {topic}, and where might I notice it this week?",
    "Write a haiku about {topic}, then explain in one line which image you chose and why.",
    "List five questions a curious student might ask about {topic}.",
    "What is a common misconception about {topic}, and how would you correct it politely?",
    "Suggest three titles for a short talk about {topic} aimed at {audience}.",
    "Summarise what people have learned about {topic} over the centuries in no more than fifty words.",
    "Tell me one surprising connection between {topic} and {topic2}.",
    "If you had to teach {topic} with a single drawing, what would you draw and why?",
)

MEDIUM_TEMPLATES: tuple[str, ...] = (
    "Write a short explanation of {topic} for {audience}. Start with a concrete example from daily "
    "life, then describe the general principle, and finish with one question the reader can think "
    "about on their own. Keep it under {n_words} words and avoid jargon; if you must use a technical "
    "term, define it the first time it appears.",
    "Draft a friendly email to the head of a community centre proposing a one-hour evening workshop "
    "on {topic} for {audience}. Explain why the topic is useful, outline what the hour would cover, "
    "and say what equipment you would need. End with two possible dates and a polite request for a reply.",
    "A student tells you they find {topic} confusing because the textbook jumps straight to formulas "
    "and definitions. As their tutor, write a reply of about {n_words} words that rebuilds the idea "
    "from intuition, uses one analogy, and suggests a small experiment or exercise they can try at home.",
    "Compare {topic} and {topic2}. Describe one way they are similar and two ways they differ, and "
    "then explain which of the two you would choose to teach first to {audience}, giving your reasons "
    "in a short paragraph.",
    "Plan a {n_days}-day self-study schedule for learning the basics of {topic}. For each day give a "
    "goal, one activity that takes less than an hour, and a way to check progress. Assume the learner "
    "is {audience} and has no special equipment.",
    "Write a short story of about {n_words} words in which an ordinary person discovers something "
    "unexpected about {topic}. The story should have a clear beginning, a turning point and an ending, "
    "and the science or history in it should be accurate.",
    "Prepare a one-minute radio script about {topic} for {audience}. Use short sentences that are easy "
    "to read aloud, include one memorable number or fact, and close with a line that invites listeners "
    "to learn more at their local library.",
    "Create a multiple-choice quiz with {n_questions} questions about {topic}. Each question should have "
    "four options with exactly one correct answer. After the quiz, give the answers with a one-sentence "
    "explanation for each.",
    "Argue both sides of this statement in two short paragraphs: 'Everyone should learn about {topic} "
    "at school.' Then write a third paragraph giving your own balanced conclusion for {audience}.",
    "Explain the most important ideas of {topic} as a numbered list of {n_points} points. Each point "
    "should be one or two sentences long, and the list should build from the simplest idea to the most "
    "advanced one.",
)

CODING_TASKS: tuple[str, ...] = (
    "Write a Python function that takes a list of integers and returns the length of the longest "
    "strictly increasing contiguous run. Include a docstring and three example calls with their outputs.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case, spaces and "
    "punctuation. Explain the time complexity of your solution in one sentence.",
    "Implement a small command-line to-do list in Python that can add, list and remove items stored in "
    "a JSON file. Keep it under sixty lines and handle a missing file gracefully.",
    "Write a SQL query that returns, for each customer, the total amount spent in the last thirty days, "
    "given tables customers(id, name) and orders(id, customer_id, amount, created_at). Order the result "
    "by the total, highest first.",
    "Explain the difference between a list and a tuple in Python, and give one situation where each is "
    "the better choice. Include a short code example for both.",
    "Write a function in JavaScript that debounces another function: calls made within a given number of "
    "milliseconds of each other should result in only one call. Add comments explaining each step.",
    "Write a Python generator that yields the Fibonacci numbers below a given limit, and show how to sum "
    "the even ones below four million using it.",
    "Review this Python snippet and point out the bug: 'def average(xs): return sum(xs) / len(xs) if xs "
    "else sum(xs)'. Suggest a clearer version and explain what it should return for an empty list.",
    "Write a regular expression that matches dates in the form YYYY-MM-DD where the month is between 01 "
    "and 12, and explain each part of the pattern. Mention what the pattern cannot check on its own.",
    "Implement binary search in Python on a sorted list, returning the index of the target or -1. Write "
    "four test cases, including an empty list and a target smaller than every element.",
    "Describe how you would design a rate limiter that allows at most one hundred requests per minute "
    "per user. Compare a fixed window with a sliding window and give the data structure you would use.",
    "Write a bash one-liner that counts how many lines in all .log files under the current directory "
    "contain the word ERROR, and explain each part of the command.",
    "Write a Python class for a bank account with deposit, withdraw and balance methods. Withdrawals "
    "larger than the balance should raise a clear exception. Include a short usage example.",
    "Explain what a race condition is using a simple example with two threads incrementing a counter, "
    "and show two different ways to fix it in Python.",
    "Write a function that merges two sorted lists into one sorted list without using the built-in sort, "
    "and state its time and memory complexity.",
    "Convert this description into a Python dataclass with type hints: a sensor reading has a sensor "
    "name, a timestamp in seconds, a value in watts and an optional note. Add a method that returns the "
    "value in kilowatts.",
    "Write a unit test with pytest for a function slugify(title) that lowercases a title, replaces spaces "
    "with hyphens and removes characters other than letters, digits and hyphens. Cover at least four cases.",
    "Explain in plain words what big-O notation measures, and rank these from fastest to slowest growth: "
    "n log n, n squared, log n, n, two to the power n. Give one algorithm for each.",
    "Write a Python script that reads a CSV file of temperatures with columns city and celsius, and prints "
    "the mean temperature per city, sorted by city name. Use only the standard library.",
    "Describe, step by step, what happens when you type a web address into a browser and press enter, "
    "from the name lookup to the page being drawn. Keep each step to one or two sentences.",
)

FORMATS: tuple[str, ...] = (
    "a twenty-minute presentation",
    "a two-page handout",
    "a blog post",
    "a short video script",
    "a lesson plan for one hour",
    "a museum panel text",
    "a newsletter article",
    "a podcast episode outline",
)

REQUIREMENTS: tuple[str, ...] = (
    "Open with a question or a surprising observation rather than a definition, so the audience wants to keep listening.",
    "Use at most one technical term per section, and define each one in ordinary words the first time it appears.",
    "Include at least one worked example with real numbers, and show every step of the calculation.",
    "Mention one common misconception and explain where it comes from before correcting it.",
    "Add a short historical note about who first described the idea and what they got wrong.",
    "Keep every sentence under twenty-five words, because some readers will use a screen reader.",
    "End each section with a one-line summary that could stand on its own.",
    "Suggest one simple activity the audience can do afterwards with household materials.",
    "Avoid humour that depends on a particular culture, since the audience is international.",
    "Include a short glossary at the end with no more than six entries.",
    "Point out one open question that researchers are still working on today.",
    "Use a consistent example throughout, returning to it in each section instead of introducing new ones.",
    "Add two questions for discussion that have no single right answer.",
    "Cite the kind of source a reader could check, such as a textbook or a public agency, without inventing references.",
    "Keep the total length appropriate for the format, and say at the top roughly how long it takes to read or present.",
    "Write the headings as questions the audience might actually ask.",
)

PASSAGES: tuple[str, ...] = (
    # A town council meeting.
    "At Tuesday's meeting the town council discussed the proposed bike lane on Mill Street. The traffic "
    "engineer reported that about 1,200 cyclists use the street on a typical weekday, and that three "
    "collisions involving bicycles were recorded last year. Shop owners worried that removing twenty-two "
    "parking spaces would reduce their customers, while a parents' group said children would cycle to "
    "school if the lane were separated from traffic. The council agreed to run a six-month trial with "
    "temporary barriers starting in April, to count shop visits before and during the trial, and to "
    "decide on a permanent design in the autumn. Councillor Ortega will report back in July.",
    # A bakery's energy bill.
    "The Corner Bakery's electricity bill rose from 410 to 690 per month over the winter. The owner, "
    "Mina, found that the two deck ovens are switched on at four in the morning but the first loaves do "
    "not go in until half past five. The display fridge door seal is torn, and the fridge compressor now "
    "runs almost continuously. A local energy adviser suggested a timer for the ovens, a new seal, and "
    "moving the proofing cabinet away from the oven wall. She also noted that baking the day's rolls in "
    "two full batches instead of four partial ones would use the oven heat more efficiently. Mina wants "
    "to cut the bill by a third before summer.",
    # A failed experiment.
    "Lab notebook, week twelve. The enzyme assay failed again: the absorbance readings drifted upward "
    "during the first ten minutes even in the control wells with no enzyme. We replaced the buffer, which "
    "was two weeks old, and the drift fell by half but did not disappear. The plate reader was serviced "
    "in March, and its lamp has about 200 hours left. Priya thinks the plates warm up after leaving the "
    "fridge; Tom suspects the substrate is slowly breaking down in the light. Next week we will run one "
    "plate with substrate kept in the dark and another left at room temperature for thirty minutes "
    "before reading, and compare the controls.",
    # A museum exhibit plan.
    "The city museum plans a new exhibit on the history of the river harbour, opening next spring in the "
    "east gallery. The curators have 140 objects from the collection, including ship models, customs "
    "ledgers and photographs of dock workers, but space for only about sixty. Visitor surveys show that "
    "families spend on average eleven minutes in a gallery and rarely read panels longer than eighty "
    "words. The education team wants a hands-on area where children can load a model cargo ship, and "
    "the archivist asks that the fragile ledgers be shown under low light for no more than three months. "
    "The budget allows one interactive screen.",
    # A software incident report.
    "Incident summary: on Friday between 14:05 and 14:47 the checkout service returned errors for about "
    "eighteen percent of requests. The cause was a configuration change that lowered the database "
    "connection pool from fifty to five connections; the change was meant for the test environment but "
    "was applied to production. Alerts fired after six minutes, but the on-call engineer first suspected "
    "the payment provider and spent twenty minutes checking its status. Rolling back the configuration "
    "fixed the problem within two minutes. No data was lost, but about 900 orders failed and some "
    "customers were charged twice and later refunded. The team will add a review step for production "
    "configuration changes.",
    # A farmer's season log.
    "This season we planted potatoes on the north field for the first time in four years, after two "
    "seasons of clover to rest the soil. Rainfall in May was less than half the usual amount, so we "
    "irrigated twice, which we had never done before. The early variety yielded about twenty-eight tonnes "
    "per hectare, close to our average, but the late variety suffered from blight in August and we "
    "lost roughly a quarter of it. Neighbours who sprayed earlier lost less. Next year we are considering "
    "a blight-resistant variety, a weather-based spraying alert, and selling part of the harvest directly "
    "at the Saturday market.",
    # A school reading programme.
    "Greenway Primary started a reading programme in September in which older pupils read with younger "
    "ones for twenty minutes, three mornings a week. After one term, teachers report that the younger "
    "pupils borrow more library books and that several shy older pupils have become more confident. "
    "Reading test scores for the younger group rose slightly, but the school cannot yet say whether this "
    "is due to the programme, since a new phonics scheme began at the same time. Some parents asked "
    "whether the older pupils miss lessons; the sessions take place during registration time. The head "
    "teacher wants to decide by Easter whether to continue.",
    # A hospital shift handover.
    "Evening handover, ward six. Twenty-four beds, twenty-two occupied. Mr Alvarez in bed three had a "
    "fall at 16:20 while walking to the bathroom; no injury was found, but he should be checked hourly "
    "overnight and given a walking frame. Bed nine is waiting for a scan that was delayed until tomorrow "
    "morning, so she should not eat after midnight. Two admissions are expected from the emergency "
    "department. The medicine fridge alarm went off twice today; maintenance has been called. One "
    "healthcare assistant is off sick tonight, so the night team will be one person short until 23:00.",
    # A ferry timetable change.
    "From the first of June the island ferry will run every ninety minutes instead of every hour, because "
    "one of the two boats needs six weeks of engine repairs. The first departure from the mainland stays "
    "at 6:30, but the last return from the island moves from 22:00 to 21:00. Commuters who work late "
    "shifts at the harbour have asked for one extra evening crossing. The operator says a replacement boat "
    "could be chartered for about 3,000 per week, which would require a temporary fare rise of roughly "
    "ten percent. Island businesses worry that day visitors will stay away during the busiest weeks.",
    # A community garden.
    "The Elm Road community garden has thirty-six plots and a waiting list of forty households. Members "
    "agreed last year that each plot must be cultivated at least once a month, but five plots have been "
    "empty since spring. The shared tool shed was broken into in March, and two lawnmowers were stolen. "
    "A local school would like to use one plot for lessons on Thursday afternoons. The water bill has "
    "doubled since members began watering with hoses instead of watering cans. The committee will meet "
    "next week to discuss a plot-sharing scheme, a better lock and a rule about hoses.",
    # Customer feedback for a small app.
    "Customer feedback for the meal-planning app, last quarter. Out of 320 reviews, the most common "
    "praise was for the shopping list that groups items by supermarket aisle. The most common complaint, "
    "in about a third of negative reviews, was that recipes cannot be scaled for one person. Several users "
    "asked for a way to exclude ingredients they dislike, and a smaller group reported that the app "
    "crashes when importing recipes from some websites. Subscriptions grew by twelve percent, but one in "
    "five new users cancels within the first month. The team has capacity for two major features before "
    "the winter release.",
    # A library digitisation project.
    "The county library is digitising its collection of local newspapers from 1880 to 1950, about 48,000 "
    "pages in total. So far 9,500 pages have been scanned, but the text recognition is poor on pages "
    "printed in small, faded type, and volunteers correct about forty pages a week. Historians have asked "
    "for the war years to be done first; genealogists would prefer the birth and marriage notices. The "
    "scanner is available only on weekdays, and the grant that pays for it ends in eighteen months. The "
    "project lead must decide the order of work and whether to pay for better recognition software.",
)

READING_TASKS: tuple[str, ...] = (
    "Summarise the material above in three bullet points, each under twenty words, for someone who has "
    "not read it.",
    "List every number mentioned above, say what it refers to, and point out any number that seems to "
    "need checking.",
    "Identify the main risk described above and propose two practical ways to reduce it, each with a "
    "first step that could be taken this week.",
    "Write five questions you would ask the people involved before making a decision, and explain briefly "
    "why each question matters.",
    "Rewrite the first document for a ten-year-old, keeping all the important facts but using short "
    "sentences and everyday words.",
    "Extract every decision or planned action mentioned above as a table with three columns: the action, "
    "who is responsible if stated, and the deadline if stated.",
    "What do the documents above have in common, if anything? Describe one shared problem or pattern, and "
    "say what someone could learn from comparing them.",
    "Write a short, polite reply of about one hundred words to the author of the first document, offering "
    "one suggestion they have not considered.",
)

_N_SHORT = 120
_N_MEDIUM = 120
_N_BRIEFS = 40
_N_READING = 80


def _spread(n_total: int, n_take: int, stride: int) -> list[int]:
    """n_take distinct indices into range(n_total), scattered by a stride coprime with n_total."""
    n_take = min(n_take, n_total)
    while _gcd(stride, n_total) != 1:
        stride += 1
    return [(k * stride) % n_total for k in range(n_take)]


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _short_prompts() -> list[str]:
    n_topics = len(TOPICS)
    prompts = []
    for index in _spread(len(SHORT_TEMPLATES) * n_topics, _N_SHORT, stride=373):
        template_i, topic_i = divmod(index, n_topics)
        prompts.append(
            SHORT_TEMPLATES[template_i].format(
                topic=TOPICS[topic_i],
                topic2=TOPICS[(topic_i * 5 + 11) % n_topics],
                audience=AUDIENCES[index % len(AUDIENCES)],
            )
        )
    return prompts


def _medium_prompts() -> list[str]:
    n_topics = len(TOPICS)
    prompts = []
    for index in _spread(len(MEDIUM_TEMPLATES) * n_topics, _N_MEDIUM, stride=211):
        template_i, topic_i = divmod(index, n_topics)
        prompts.append(
            MEDIUM_TEMPLATES[template_i].format(
                topic=TOPICS[topic_i],
                topic2=TOPICS[(topic_i * 7 + 3) % n_topics],
                audience=AUDIENCES[(index // 3) % len(AUDIENCES)],
                n_words=(100, 150, 200, 250, 300)[index % 5],
                n_days=(3, 5, 7, 10)[index % 4],
                n_questions=(5, 6, 8, 10)[index % 4],
                n_points=(4, 5, 6, 7, 8)[index % 5],
            )
        )
    return prompts


def _briefs() -> list[str]:
    """Long instructions: a context sentence and a numbered list of 4 to 15 requirements."""
    prompts = []
    for k in range(_N_BRIEFS):
        topic = TOPICS[(k * 13 + 5) % len(TOPICS)]
        audience = AUDIENCES[k % len(AUDIENCES)]
        fmt = FORMATS[(k * 3) % len(FORMATS)]
        n_requirements = 4 + (k * 7) % 12
        first = (k * 5) % len(REQUIREMENTS)
        chosen = [REQUIREMENTS[(first + j) % len(REQUIREMENTS)] for j in range(n_requirements)]
        lines = [
            f"I am preparing {fmt} about {topic} for {audience}. Please write it for me, following "
            "these requirements carefully:",
            "",
            *(f"{j + 1}. {requirement}" for j, requirement in enumerate(chosen)),
            "",
            "Before the text itself, list in one line each which requirements were hardest to combine and how you handled it.",
        ]
        prompts.append("\n".join(lines))
    return prompts


def _reading_tasks() -> list[str]:
    """Reading comprehension: one to three documents followed by a task about them."""
    prompts = []
    n_passages = len(PASSAGES)
    for k in range(_N_READING):
        n_docs = 1 + (k * 2) % 3  # 1, 3, 2, 1, 3, 2, ...
        first = (k * 5) % n_passages
        docs = [PASSAGES[(first + 4 * j) % n_passages] for j in range(n_docs)]
        task = READING_TASKS[(k + k // n_passages) % len(READING_TASKS)]
        if n_docs == 1:
            body = f"Read the following document.\n\n{docs[0]}"
        else:
            labelled = "\n\n".join(f"Document {j + 1}:\n{doc}" for j, doc in enumerate(docs))
            body = f"Read the following {n_docs} documents.\n\n{labelled}"
        prompts.append(f"{body}\n\n{task}")
    return prompts


def _interleave(*groups: list[str]) -> list[str]:
    """Round-robin over the groups so any prefix of the set mixes short and long requests."""
    return [item for row in zip_longest(*groups) for item in row if item is not None]


@lru_cache(maxsize=1)
def _builtin_prompts() -> tuple[str, ...]:
    return tuple(
        _interleave(_short_prompts(), _medium_prompts(), _reading_tasks(), list(CODING_TASKS), _briefs())
    )


def builtin_prompts() -> list[str]:
    """The built-in prompt set, always the same texts in the same order."""
    return list(_builtin_prompts())
