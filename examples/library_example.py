"""Use guardrail as a library: constrained generation on the embedded model, validated, re-asked.

``Guard`` with no ``llm=`` runs the default embedded model (Gemma 3 270M) with decoding constrained
to the schema, so the output always has the right shape; what decoding cannot enforce (here, a
pydantic rule that a meeting ends after it starts) is caught by validation and re-asked.

Run: python examples/library_example.py
"""

from __future__ import annotations

import json

from pydantic import BaseModel, model_validator

from guardrail import Guard, GuardError


class Meeting(BaseModel):
    title: str
    start: str  # "HH:MM"
    end: str

    @model_validator(mode="after")
    def ends_after_it_starts(self) -> Meeting:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


def show(label: str, guard: Guard, text: str) -> None:
    try:
        result = guard.run(text)
    except GuardError as error:
        print(f"{label}: no valid output after {len(error.attempts)} attempts: {error}")
        return
    print(f"{label}: {json.dumps(result.data, ensure_ascii=False)}")
    for number, attempt in enumerate(result.attempts, 1):
        issues = "; ".join(str(issue) for issue in attempt.issues) or "-"
        print(f"  attempt {number}: {attempt.ended}, {attempt.duration_s:.1f} s, "
              f"{attempt.completion_tokens} tokens, issues: {issues}")


if __name__ == "__main__":
    # A shipped schema by name: schemas/contact.json.
    contacts = Guard("contact", max_new_tokens=96)
    show("contact", contacts, "Reach Dana Whitfield at dana@whitfield.io or +1 415 555 0101.")

    # A pydantic model with a rule that constrained decoding cannot enforce.
    meetings = Guard(Meeting, retries=2, max_new_tokens=64)
    show("meeting", meetings, "Design review on Thursday from 14:30 until 15:15 in room 4.")

    # Many prompts: the local backend generates them as one batch.
    texts = [
        "Write to Li Wei (li.wei@example.cn), Acme Corp.",
        "Ana Souza, ana@souza.br, phone +55 11 5555 0199",
    ]
    for result in contacts.run_many(texts, concurrency=2):
        print("batch:", json.dumps(result.data) if result.ok else f"failed: {result.error}")
