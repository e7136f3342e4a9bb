"""The SNIPS slot-filling suite: real extraction cases from the SNIPS NLU benchmark's *train* split.

SNIPS (Coucke et al. 2018, arXiv:1805.10190; CC0) has utterances of 7 intents with their slot
values, each value a span of the utterance. ``build_snips_suite`` makes one task per intent:
cases and a pool of few-shot examples drawn from the train split (never the test split), the
intent's JSON Schema with a short description of each slot (``SLOT_DESCRIPTIONS``, written from
the train rows: what a slot holds and what it does not), ``extractive`` answers and the nearest
``shots`` examples per prompt. The shipped ``examples/suites/snips.yaml`` is its output::

    python -m guardrail.snips ../shared/data/snips/derived examples/suites/snips.yaml
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.errors import SuiteError
from guardrail.perturb import derive_seed
from guardrail.schema import Schema
from guardrail.suite import Case, Example, Suite, Task

__all__ = ["SLOT_DESCRIPTIONS", "SnipsRow", "build_snips_suite", "load_snips", "snips_schemas"]

#: What each slot holds, per intent: the words a reader of the train rows would use.
SLOT_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "AddToPlaylist": {
        "artist": "the performer whose music is added",
        "entity_name": "the name of a song or piece added (not a performer)",
        "music_item": "the kind of thing added: song, track, album, artist, tune",
        "playlist": "the name of the playlist, without the word playlist",
        "playlist_owner": "whose playlist: my, or a name with 's",
    },
    "BookRestaurant": {
        "city": "a city", "country": "a country", "state": "a state or its abbreviation",
        "cuisine": "a kind of food: indonesian, german...", "facility": "an amenity: wifi, outdoor, spa...",
        "party_size_description": "who comes, in words: me and my child...",
        "party_size_number": "how many people, as written: 4, seven...",
        "poi": "a place named by its relation to someone: my office, their airbnb...",
        "restaurant_name": "the restaurant's own name", "restaurant_type": "restaurant, bar, pub, brasserie...",
        "served_dish": "a dish: sushi, burritos...", "sort": "a preference: best, popular, top-rated...",
        "spatial_relation": "how near: close, nearby, within walking distance...",
        "timeRange": "when: now, tomorrow, at 7 pm, next year...",
    },
    "GetWeather": {
        "city": "a city", "country": "a country", "state": "a state or its abbreviation",
        "condition_description": "a weather condition: snow, windy, foggy...",
        "condition_temperature": "a temperature word: cold, hot, chillier...",
        "current_location": "here, current location, current spot...",
        "geographic_poi": "a named park, reserve or landmark",
        "spatial_relation": "how near: nearby, close-by, neighboring...",
        "timeRange": "when: now, this week, aug. 22...",
    },
    "PlayMusic": {
        "album": "an album's name", "artist": "a performer", "genre": "a musical style",
        "music_item": "the kind of thing: song, album, track...", "playlist": "a playlist's name",
        "service": "the app or site to play on: Spotify, Youtube...", "sort": "which: last, latest, top, popular...",
        "track": "a song's title", "year": "a year or decade: 1990, the eighties...",
    },
    "RateBook": {
        "best_rating": "the top of the scale: the 6 of 'out of 6'",
        "object_name": "the title of the book or work rated",
        "object_part_of_series_type": "series, chronicle, saga",
        "object_select": "which one: this, current...", "object_type": "novel, book, textbook, essay...",
        "rating_unit": "stars or points", "rating_value": "the rating given, as written: 4, four...",
    },
    "SearchCreativeWork": {
        "object_name": "the title of the work searched for",
        "object_type": "the kind of work: movie, game, song, album, show, saga...",
    },
    "SearchScreeningEvent": {
        "location_name": "a named cinema chain or theatre",
        "movie_name": "a film's title", "movie_type": "movies, animated movies, films...",
        "object_location_type": "cinema, movie theatre, movie house...",
        "object_type": "what is looked up: movie schedule, movie times...",
        "spatial_relation": "how near: closest, nearby, in the neighborhood...",
        "timeRange": "when: now, tonight, at 7 A.M....",
    },
}


@dataclass(frozen=True)
class SnipsRow:
    """One SNIPS utterance: its intent, text, gold slot values and their character spans."""

    id: str
    intent: str
    text: str
    slots: dict[str, list[str]]
    spans: list[dict[str, Any]]


def load_snips(directory: str | Path, split: str = "train") -> list[SnipsRow]:
    """Rows of ``snips_<split>.jsonl`` under ``directory`` (the ``derived/`` folder).

    >>> rows = load_snips("../shared/data/snips/derived")  # doctest: +SKIP
    >>> rows[0].intent, rows[0].slots["playlist"]  # doctest: +SKIP
    ('AddToPlaylist', ['música libre'])
    """
    path = Path(directory) / f"snips_{split}.jsonl"
    if not path.is_file():
        raise SuiteError(f"no SNIPS file here (expected {path.name} in {path.parent})", source=path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                rows.append(
                    SnipsRow(
                        str(raw["id"]),
                        raw["intent"],
                        raw["text"],
                        {k: list(v) for k, v in raw["slots"].items()},
                        list(raw.get("spans", [])),
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise SuiteError(f"line {number}: not a SNIPS row ({type(exc).__name__}: {exc})", source=path) from exc
    return rows


def snips_schemas(directory: str | Path) -> dict[str, dict[str, Any]]:
    """The JSON Schema of each intent, from ``intent_schemas.json``."""
    path = Path(directory) / "intent_schemas.json"
    try:
        schemas = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SuiteError(f"cannot read the SNIPS intent schemas: {exc}", source=path) from exc
    if not isinstance(schemas, dict):
        raise SuiteError("expected one JSON Schema per intent", source=path)
    return schemas


def _words(camel: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", camel).lower()


def described(schema: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
    """``schema`` with a ``description`` on each property ``descriptions`` names."""
    properties = {name: ({**sub, "description": descriptions[name]} if name in descriptions else sub)
                  for name, sub in schema.get("properties", {}).items()}
    return {**schema, "properties": properties}


def build_snips_suite(
    directory: str | Path,
    *,
    intents: Sequence[str] | None = None,
    cases_per_intent: int = 8,
    examples_per_intent: int = 40,
    shots: int | None = 3,
    extractive: bool = True,
    descriptions: bool = False,
    min_slots: int = 2,
    seed: int = 0,
) -> Suite:
    """A suite with one task per SNIPS intent, drawn from the *train* split only.

    Cases are utterances with at least ``min_slots`` slots (so ``info_removed`` can take one
    away and leave others); few-shot examples are a pool of ``examples_per_intent`` other train
    utterances, never cases, of which each prompt shows the ``shots`` nearest to its input
    (``None``: all of them). Slot values are spans of the utterance, so the tasks are
    ``extractive``; ``descriptions`` adds ``SLOT_DESCRIPTIONS`` to the schemas. The draw is
    seeded per intent, so adding an intent leaves the others' cases unchanged.

    >>> suite = build_snips_suite("../shared/data/snips/derived")  # doctest: +SKIP
    >>> len(suite), len(suite.tasks)  # doctest: +SKIP
    (56, 7)
    """
    rows = load_snips(directory, "train")
    schemas = snips_schemas(directory)
    tasks = []
    for intent in intents or sorted(schemas):
        if intent not in schemas:
            raise SuiteError(f"unknown intent {intent!r}; known: {sorted(schemas)}", source=directory)
        mine = sorted((r for r in rows if r.intent == intent), key=lambda r: r.id)
        rng = random.Random(derive_seed(seed, "snips", intent))
        pool = [r for r in mine if len(r.slots) >= min_slots]
        if len(pool) < cases_per_intent:
            raise SuiteError(f"{intent}: only {len(pool)} train rows have {min_slots}+ slots", source=directory)
        chosen = rng.sample(pool, cases_per_intent)
        used = {r.id for r in chosen}
        shot_rows = rng.sample([r for r in mine if r.id not in used and r.slots], examples_per_intent)
        keys = ", ".join(schemas[intent].get("properties", {}))
        instruction = (
            f"Extract the slots of this {_words(intent)} request as a JSON object. Use only these keys: {keys}. "
            "Leave out every slot the request does not mention. Each value is a list of strings copied "
            "exactly from the request."
        )
        tasks.append(
            Task(
                name=intent,
                schema=Schema.load(described(schemas[intent], SLOT_DESCRIPTIONS.get(intent, {}))
                                   if descriptions else schemas[intent], name=intent),
                instruction=instruction,
                examples=[Example(r.text, r.slots) for r in shot_rows],
                cases=[Case(r.id, r.text, r.slots) for r in chosen],
                extractive=extractive,
                shots=shots,
            )
        )
    return Suite(
        name="snips",
        tasks=tasks,
        description=(
            "Slot filling on SNIPS (Coucke et al. 2018, arXiv:1805.10190; CC0), one task per intent. "
            "Cases and few-shot examples come from the train split only."
        ),
    )


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m guardrail.snips SNIPS_DERIVED_DIR OUT.yaml", file=sys.stderr)
        return 2
    suite = build_snips_suite(argv[0])
    suite.dump(
        argv[1],
        header=(
            "Generated by guardrail.snips.build_snips_suite from snips_train.jsonl; do not edit by hand.\n"
            "Regenerate: python -m guardrail.snips ../shared/data/snips/derived examples/suites/snips.yaml\n"
            "Data: SNIPS NLU benchmark (sonos/nlu-benchmark), CC0; cite Coucke et al. 2018, arXiv:1805.10190."
        ),
    )
    print(f"wrote {argv[1]}: {len(suite)} cases in {len(suite.tasks)} tasks")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
