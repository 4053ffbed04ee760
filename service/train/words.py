"""The words of the keyword set: keywords, the `_unknown_` vocabulary and babble filler.

`_unknown_` holds three kinds of word: the other Speech Commands words, everyday words, and
near-misses of every keyword (lift for left, light for right, ...), which teach a model to
listen to the whole word instead of its loudest part.

Homophones of a keyword are left out (HOMOPHONES): a text-to-speech voice reads "know" with
the very phonemes of "no" and "write" with those of "right", so such a clip would be the same
sound under two labels, noise that no model could learn from and that a listener could not
resolve either. tests/train/test_words.py checks with espeak-ng's own phonemes, in every
English accent, that no `_unknown_` word sounds like a keyword.
"""

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")

# One or two sounds away from a keyword, never the same phonemes.
NEAR_MISSES = {
    "yes": ("yet", "yell", "less", "guess", "mess"),
    "no": ("now", "nose", "note", "snow", "new"),
    "up": ("cup", "pup", "cut", "app", "upper"),
    "down": ("town", "gown", "dawn", "round", "dome"),
    "left": ("lift", "loft", "lest", "theft", "laughed"),
    "right": ("light", "bright", "fight", "ride", "white", "night"),
    "on": ("one", "own", "in", "an", "honk"),
    "off": ("of", "cough", "oft", "awful", "often"),
    "stop": ("top", "shop", "step", "stock", "drop"),
    "go": ("so", "do", "goat", "grow", "low", "to", "two"),
}
# Spelled apart, spoken alike: never `_unknown_`, see the module docstring.
HOMOPHONES = {"no": ("know", "noh"), "right": ("write", "rite", "wright")}

# The other words of Speech Commands v2, then everyday words.
SPEECH_COMMANDS_OTHERS = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "seven", "sheila", "six", "three", "tree", "wow", "zero", "learn", "follow",
    "forward", "backward", "visual",
)  # fmt: skip
EVERYDAY = (
    "apple", "window", "music", "yellow", "table", "chair", "green", "blue", "purple",
    "monkey", "banana", "coffee", "computer", "listen", "open", "close", "start", "begin",
    "finish", "again", "maybe", "hello", "thanks", "please", "sorry", "later", "never",
    "always", "quick", "slow", "big", "small", "hot", "cold", "light", "heavy", "river",
    "tiger", "rabbit", "pencil", "button", "camera", "phone", "ticket", "planet", "sister",
    "brother", "winter", "summer", "silver", "golden", "seventy", "hundred", "million",
)  # fmt: skip
NEAR_MISS_WORDS = tuple(dict.fromkeys(w for ws in NEAR_MISSES.values() for w in ws))
OTHER_WORDS = tuple(w for w in dict.fromkeys((*SPEECH_COMMANDS_OTHERS, *EVERYDAY))
                    if w not in NEAR_MISS_WORDS)
UNKNOWN_WORDS = (*NEAR_MISS_WORDS, *OTHER_WORDS)

# Babble talks in words that are neither keywords nor unknown words.
BABBLE_WORDS = (
    "morning", "people", "water", "number", "little", "around", "something", "because",
    "together", "picture", "mountain", "garden", "paper", "story", "market", "doctor",
    "family", "question", "evening", "country", "weather", "kitchen", "village", "orange",
)  # fmt: skip

# A neighbouring word in a phrase ("front left", "let us go"): heard beside a keyword or an
# unknown word but never labelled, so neither keywords nor unknown words. The short ones are
# the function words that stand next to a command; the phrases of ship_goals are not here.
CONTEXT_WORDS = (
    *BABBLE_WORDS, "the", "and", "that", "this", "just", "very", "with", "here", "then",
    "what", "can", "back", "some", "make", "from", "over", "there",
)  # fmt: skip
