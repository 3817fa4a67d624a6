"""docs/troubleshooting.md quotes the messages the code prints, word for word: every quoted
message (a code span that starts like one, or has several words) is found, piece by piece
between its `…` placeholders, in the string literals of the scripts."""
import io
import re
import tokenize

from conftest import REPO

DOC = REPO / "docs" / "troubleshooting.md"
PLACEHOLDER = "…"
MESSAGE_STARTS = ("error: ", "warning: ", "stopped by ")
MIN_SPACES = 3  # a code span with more words than a flag or a file name is a message
PRINTED_PREFIXES = ("error: ",)  # added by cli.run_cli, not part of the messages
EDGE = " ;:.,()"  # punctuation that may sit between two literals of one message


def quoted_messages():
    spans = re.findall(r"`([^`]+)`", DOC.read_text(encoding="utf-8"))
    return [s for s in spans if s.startswith(MESSAGE_STARTS) or s.count(" ") >= MIN_SPACES]


def literal_texts():
    """Each run of adjacent string literals in the scripts, joined, f-string fields -> \\0."""
    texts = []
    for path in [*REPO.glob("*.py"), *REPO.glob("mae_cifar/**/*.py")]:
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        run = []
        for tok in tokens:
            if tok.type == tokenize.STRING:
                body = re.sub(r"^[a-zA-Z]*('''|\"\"\"|'|\")|('''|\"\"\"|'|\")$", "", tok.string)
                run.append(re.sub(r"\{[^{}]*\}", "\0", body) if "f" in
                           tok.string.split(tok.string[-1])[0].lower() else body)
            elif tok.type not in (tokenize.NL, tokenize.COMMENT) and run:
                texts.append("".join(run))
                run = []
    return texts


def test_quoted_messages_come_from_the_code():
    messages = quoted_messages()
    assert len(messages) > 20  # the document quotes the messages, not only names
    texts = literal_texts()
    missing = []
    for message in messages:
        for prefix in PRINTED_PREFIXES:
            message = message.removeprefix(prefix)
        for piece in message.split(PLACEHOLDER):
            piece = piece.strip(EDGE)
            if piece and not any(piece in t for t in texts):
                missing.append((message, piece))
    assert not missing


def test_readme_points_to_it():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/troubleshooting.md" in readme and "## When things go wrong" in readme
