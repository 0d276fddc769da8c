"""The built-in question set of the judged evals: MT-Bench's eight categories, two questions each.

Written for danlu (not copied from MT-Bench or AlpacaEval), single-turn, short enough that a small
model's answer and the judge prompt fit a 2k context. Each question carries a hand-written reference
answer: AlpacaEval compares against a fixed reference model's outputs, and these are danlu's default
reference when no `--reference` model is given.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgedQuestion:
    category: str
    question: str
    reference: str


QUESTIONS: tuple[JudgedQuestion, ...] = (
    JudgedQuestion(
        "writing",
        "Write a short thank-you note to a neighbour who watered my plants while I was away.",
        "Dear Sam, thank you so much for watering my plants while I was away. They are green and "
        "healthy, and it was a relief to know they were in good hands. Please let me return the favour "
        "whenever you travel. Warm wishes, Alex",
    ),
    JudgedQuestion(
        "writing",
        "Describe a rainy morning in a city in three sentences.",
        "Rain drums on the awnings while buses hiss through puddles at the crossings. Commuters hurry "
        "under umbrellas, their reflections smeared across the wet pavement. In the cafe windows the "
        "lights glow warm against the grey sky.",
    ),
    JudgedQuestion(
        "roleplay",
        "Pretend you are a tour guide at an old castle. Greet a group of visitors.",
        "Good morning, everyone, and welcome to the castle! These walls have stood for over seven "
        "hundred years. Please stay together, mind the narrow stairs, and ask me anything as we go. "
        "Our first stop is the great hall, where the lords once held their feasts.",
    ),
    JudgedQuestion(
        "roleplay",
        "You are a friendly librarian. A child asks you for a book about dinosaurs. What do you say?",
        "What a great choice! Our dinosaur books are on the low shelf by the window. I would start "
        "with a picture book about the Tyrannosaurus and the Triceratops. Would you like me to show "
        "you, and help you get a library card so you can take it home?",
    ),
    JudgedQuestion(
        "reasoning",
        "If all cats are animals and some animals are black, must some cats be black? Explain.",
        "No. The black animals could all be animals other than cats, so the premises do not force "
        "any cat to be black. Some cats may be black, but it does not follow from these statements.",
    ),
    JudgedQuestion(
        "reasoning",
        "Tom is taller than Ann, and Ann is taller than Joe. Who is the shortest?",
        "Joe is the shortest: Tom is taller than Ann, and Ann is taller than Joe, so Joe is shorter "
        "than both.",
    ),
    JudgedQuestion(
        "math",
        "What is 15% of 80? Show the calculation.",
        "15% of 80 is 0.15 x 80 = 12.",
    ),
    JudgedQuestion(
        "math",
        "A train travels 120 km in 2 hours. What is its average speed?",
        "Average speed is distance divided by time: 120 km / 2 h = 60 km/h.",
    ),
    JudgedQuestion(
        "coding",
        "Write a Python function that returns the largest number in a list.",
        "def largest(numbers):\n    if not numbers:\n        raise ValueError('empty list')\n"
        "    best = numbers[0]\n    for x in numbers[1:]:\n        if x > best:\n            best = x\n"
        "    return best",
    ),
    JudgedQuestion(
        "coding",
        "Explain what a for loop does in programming, in two sentences.",
        "A for loop repeats a block of code once for each item in a sequence, or a set number of "
        "times. It saves writing the same statements over and over, for example to add up every "
        "number in a list.",
    ),
    JudgedQuestion(
        "extraction",
        "From the sentence 'Maria moved to Lisbon in 2019 to work as a nurse', list the person, "
        "the city, the year and the job.",
        "Person: Maria. City: Lisbon. Year: 2019. Job: nurse.",
    ),
    JudgedQuestion(
        "extraction",
        "Which fruits are mentioned here: 'We bought apples, bread, bananas and milk'?",
        "The fruits mentioned are apples and bananas.",
    ),
    JudgedQuestion(
        "stem",
        "Why is the sky blue?",
        "Sunlight is scattered by the molecules of the air, and short blue wavelengths are scattered "
        "much more strongly than long red ones (Rayleigh scattering). So blue light reaches our eyes "
        "from every part of the sky.",
    ),
    JudgedQuestion(
        "stem",
        "What do plants need for photosynthesis?",
        "Plants need light, water and carbon dioxide. Using the green pigment chlorophyll, they turn "
        "these into glucose for energy and release oxygen.",
    ),
    JudgedQuestion(
        "humanities",
        "Who wrote Romeo and Juliet, and what is it about?",
        "William Shakespeare wrote Romeo and Juliet. It is a tragedy about two young lovers from "
        "feuding families in Verona whose secret love ends in both their deaths, which finally "
        "reconciles their families.",
    ),
    JudgedQuestion(
        "humanities",
        "Give two reasons why people learn history.",
        "History helps people understand how the present came about, and it offers lessons from past "
        "mistakes and successes that can guide decisions today.",
    ),
)
