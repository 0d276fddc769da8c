"""The 16 words of the finetuning and alignment tests' toy conversations ("a or b?" -> "b, not a.")."""

WORDS = [
    "king",
    "queen",
    "lord",
    "lady",
    "night",
    "day",
    "love",
    "death",
    "sword",
    "crown",
    "river",
    "town",
    "friend",
    "foe",
    "heart",
    "blood",
]
