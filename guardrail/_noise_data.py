"""Tables the perturbation families draw from: keyboard, OCR, look-alikes, stop words, distractors.

Kept apart from ``perturb.py`` so the logic there reads without pages of data. Everything here
is plain constants, written for guardrail.
"""

from __future__ import annotations

#: Keys next to each letter on a US QWERTY keyboard (same row and the rows above and below).
QWERTY_NEIGHBOURS: dict[str, str] = {
    "q": "wa", "w": "qase", "e": "wsdr", "r": "edft", "t": "rfgy", "y": "tghu", "u": "yhji",
    "i": "ujko", "o": "iklp", "p": "ol",
    "a": "qwsz", "s": "awedxz", "d": "serfcx", "f": "drtgvc", "g": "ftyhbv", "h": "gyujnb",
    "j": "huikmn", "k": "jiolm", "l": "kop",
    "z": "asx", "x": "zsdc", "c": "xdfv", "v": "cfgb", "b": "vghn", "n": "bhjm", "m": "njk",
}  # fmt: skip

#: What OCR engines commonly misread a glyph (or glyph pair) as. Multi-letter sources come
#: first so a scan prefers "rn" -> "m" over "r" on its own.
OCR_CONFUSIONS: dict[str, tuple[str, ...]] = {
    "rn": ("m",), "cl": ("d",), "vv": ("w",), "ri": ("n",), "li": ("h",),
    "m": ("rn",), "d": ("cl",), "w": ("vv",), "n": ("ri",),
    "l": ("1", "I"), "I": ("l", "1"), "i": ("l",), "O": ("0",), "o": ("0",),
    "S": ("5",), "B": ("8",), "Z": ("2",), "G": ("6",), "g": ("q", "9"), "q": ("g",),
    "e": ("c",), "c": ("e",), "h": ("b",), "b": ("h",), "u": ("v",), "v": ("u",), "a": ("o",),
}  # fmt: skip

#: Latin letters and a Cyrillic or Greek letter that renders the same in most fonts.
HOMOGLYPHS: dict[str, str] = {
    "a": "\u0430", "c": "\u0441", "e": "\u0435", "o": "\u043e", "p": "\u0440", "x": "\u0445",
    "y": "\u0443", "i": "\u0456", "j": "\u0458", "s": "\u0455", "v": "\u03bd", "l": "\u04cf",
    "A": "\u0410", "B": "\u0412", "C": "\u0421", "E": "\u0415", "H": "\u041d", "I": "\u0406",
    "K": "\u041a", "M": "\u041c", "N": "\u039d", "O": "\u041e", "P": "\u0420", "T": "\u0422",
    "X": "\u0425", "Y": "\u04ae", "Z": "\u0396",
}  # fmt: skip

#: Invisible characters: zero-width space, non-joiner, joiner, word joiner, byte-order mark.
ZERO_WIDTH: tuple[str, ...] = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")

#: Full-width forms sit at a fixed offset from printable ASCII ("A" -> "\uff21").
FULLWIDTH_OFFSET = 0xFEE0

#: Punctuation a noisy writer adds after a word, or puts in place of another mark.
PUNCTUATION: tuple[str, ...] = (",", ".", ";", ":", "!", "?", "...", " -", "'")

#: Words that can be dropped without changing what a request asks for. Negations ("not",
#: "no", "never") are left out on purpose: dropping them flips the meaning.
STOP_WORDS: frozenset[str] = frozenset({
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "with", "by", "from", "and", "or", "is",
    "are", "was", "be", "this", "that", "it", "as", "please", "just", "some", "so", "very", "really",
    "then", "also", "kindly",
})  # fmt: skip

#: Short irrelevant sentences. Topics avoid everything a suite asks about (music, weather,
#: restaurants, books, films, invoices, contacts) and carry no names, numbers, dates or times,
#: so adding them never changes the right answer.
SHORT_DISTRACTORS: tuple[str, ...] = (
    "The office plants were watered.",
    "Someone left a blue umbrella by the door.",
    "The printer upstairs is out of paper.",
    "Remember to recycle the cardboard boxes.",
    "The hallway lights flicker now and then.",
    "Bicycles should be parked behind the building.",
    "The coffee machine has been descaled.",
    "A chess club meets in the small room.",
    "The garden path needs sweeping.",
    "The kettle takes a while to boil.",
    "Pigeons have been nesting on the roof.",
    "The lift is being serviced.",
    "Knitting needles come in many sizes.",
    "The stairwell has a fresh coat of paint.",
    "Ferns prefer a shady corner.",
    "The spare keys hang on the hook.",
)

#: Long irrelevant sentences, under the same rules as the short ones.
LONG_DISTRACTORS: tuple[str, ...] = (
    "Volunteers spent hours clearing fallen branches from the footpath that runs along the river, "
    "and they plan to finish the job once the ground has dried out a little.",
    "The committee that looks after the shared garden has asked everyone to label their tools, "
    "because several trowels and a watering can have gone missing from the shed.",
    "According to the building manager, the noise from the basement is only the old boiler "
    "settling, and there is no reason for anyone to be concerned about it.",
    "A small group of neighbours has started collecting used batteries in a box by the entrance, "
    "so that they can be taken to the proper recycling point in one trip.",
    "The new bicycle racks are sturdier than the old ones, although a few people have said that "
    "the spacing makes it awkward to lock a wide frame.",
    "Most of the houseplants in the reception area seem to be thriving, except for the tall palm "
    "near the window, which keeps dropping its lower leaves.",
    "Several people have pointed out that the notice board is covered in outdated flyers, and "
    "someone has offered to sort through them and keep only the useful ones.",
    "The chess club has decided to move its meetings to the quieter room at the end of the "
    "corridor, where the light is better and the chairs are more comfortable.",
    "Birdwatchers in the park have noticed that the ducks gather near the bridge, probably "
    "because that is where visitors most often scatter breadcrumbs.",
    "Although the hedge along the car park was trimmed not long ago, it is already starting to "
    "creep over the kerb and will need another cut before long.",
)

#: Words a removed value usually hangs on ("in Paris", "for 4 people"); info removal takes
#: the one just before a value out with it so the remaining text still reads.
CONNECTORS: frozenset[str] = frozenset({
    "in", "at", "on", "for", "to", "from", "by", "with", "of", "the", "a", "an", "my", "our", "your",
    "their", "his", "her", "its", "this", "that",
})  # fmt: skip
