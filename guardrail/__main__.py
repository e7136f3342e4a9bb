"""``python -m guardrail``: the ``guardrail`` command, for when the console script is not on PATH."""

from guardrail.cli import main

if __name__ == "__main__":
    main()
