"""The block-wise DATA reader, byte for byte (pure; no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smtpgate.receiver import replies
from smtpgate.receiver.data import END, MAX_LINE, DataReader, _longer_line


def _read(
    stream: bytes, cuts: list[int], limit: int | None = None
) -> tuple[DataReader, bytes | None]:
    reader = DataReader(limit)
    points = sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]
    previous = 0
    for point in points:
        if point <= previous:
            continue
        rest = reader.feed(stream[previous:point])
        previous = point
        if rest is not None:
            return reader, rest + stream[point:]
    return reader, None


MESSAGE = b"Subject: s\r\n\r\n..leading dot\r\nbody\r\n"


@given(st.lists(st.integers(0, 200), max_size=8))
def test_chunking_never_changes_the_result(cuts: list[int]) -> None:
    reader, rest = _read(MESSAGE + b".\r\nMAIL FROM:<next@example.org>\r\n", cuts)
    assert rest == b"MAIL FROM:<next@example.org>\r\n"
    assert reader.result() == (b"Subject: s\r\n\r\n.leading dot\r\nbody\r\n", None)


def test_empty_message_and_message_without_trailing_pipelining() -> None:
    reader, rest = _read(b".\r\n", [])
    assert rest == b"" and reader.result() == (b"", None)


@pytest.mark.parametrize(
    ("stream", "reply"),
    [
        (b"a\nb\r\n.\r\n", replies.BARE_LINE_ENDING_DATA),
        (b"a\rb\r\n.\r\n", replies.BARE_LINE_ENDING_DATA),
        (b"a\r\r\n.\r\n", replies.BARE_LINE_ENDING_DATA),
        (b"a\r\n\x00.\r\n.\r\n", replies.NUL_IN_DATA),
        (b"x" * 1001 + b"\r\n.\r\n", replies.DATA_LINE_TOO_LONG),
    ],
)
def test_refusals(stream: bytes, reply: replies.Reply) -> None:
    reader, rest = _read(stream, [3, 7])
    assert rest == b""
    assert reader.result() == (None, reply)


@pytest.mark.parametrize("sequence", [b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\n"])
def test_smuggled_terminators_do_not_end_data(sequence: bytes) -> None:
    reader, rest = _read(b"first" + sequence + b"MAIL FROM:<x@y>\r\n", [2, 9])
    assert rest is None and not reader.done


@given(st.lists(st.integers(0, 6000), max_size=6))
def test_size_limit_holds_across_chunks(cuts: list[int]) -> None:
    big = (b"x" * 78 + b"\r\n") * 60
    reader, rest = _read(big + b".\r\nQUIT\r\n", cuts, limit=2000)
    assert rest == b"QUIT\r\n"
    assert reader.result() == (None, replies.DATA_TOO_MUCH)
    assert len(reader.content) <= 2000  # nothing kept past the limit


def _whole(stream: bytes, limit: int | None) -> tuple[bytes | None, replies.Reply | None]:
    """The rules applied to the whole message at once (what the reader does in blocks)."""
    end = stream.find(b"\r\n.\r\n")
    raw = b"" if stream.startswith(b".\r\n") else stream[: end + 2]
    if limit is not None and len(raw) > limit:
        return None, replies.DATA_TOO_MUCH
    if max(map(len, raw.split(b"\r\n")), default=0) + 2 > 1001:
        return None, replies.DATA_LINE_TOO_LONG
    if b"\x00" in raw:
        return None, replies.NUL_IN_DATA
    bare = raw.replace(b"\r\n", b"")
    if b"\r" in bare or b"\n" in bare:
        return None, replies.BARE_LINE_ENDING_DATA
    content = raw.replace(b"\r\n.", b"\r\n")
    return (content[1:] if content.startswith(b".") else content), None


_PIECES = st.sampled_from(
    [b"a", b"bc", b".", b"..", b"\r\n", b"\r", b"\n", b"\x00", b"x" * 400, b"\r\n.", b" "]
)


@settings(deadline=None, max_examples=300)
@given(
    st.lists(_PIECES, max_size=40),
    st.lists(st.integers(0, 2000), max_size=8),
    st.sampled_from([None, 500, 5000]),
)
def test_reading_in_blocks_follows_the_whole_message_rules(
    pieces: list[bytes], cuts: list[int], limit: int | None
) -> None:
    stream = b"".join(pieces) + b"\r\n.\r\nQUIT\r\n"
    reader, rest = _read(stream, cuts, limit)
    assert rest is not None and rest.endswith(b"QUIT\r\n")
    assert reader.result() == _whole(stream, limit)


BODY = (b"X" * 78 + b"\r\n") * 2000  # 160 KB without a dot, as base64 is


@pytest.mark.parametrize("split", range(len(END) + 1))
@pytest.mark.parametrize("stuffed", [b"", b"..a dot\r\n"])
def test_a_body_without_dots_ends_at_its_marker_wherever_the_block_ends(
    split: int, stuffed: bytes
) -> None:
    # Blocks without a dot are passed on whole; the marker may straddle two blocks.
    stream = b"Subject: s\r\n\r\n" + BODY + stuffed + BODY + b".\r\nQUIT\r\n"
    at = len(stream) - len(END + b"QUIT\r\n") + split  # END begins at BODY's last CRLF
    reader, rest = _read(stream, [65536, 131072, at])
    assert rest == b"QUIT\r\n"
    unstuffed = stuffed[1:]
    assert reader.result() == (b"Subject: s\r\n\r\n" + BODY + unstuffed + BODY, None)


def test_a_dot_in_one_block_does_not_end_data_without_its_line_ending() -> None:
    reader, rest = _read(BODY + b"\r\n." + BODY, [len(BODY) + 3])
    assert rest is None and not reader.done


def _longest_split(lines: bytes, limit: int) -> bool:
    """What ``_longer_line`` replaced: split into lines, the longest one with its CRLF."""
    return max(map(len, lines.split(b"\r\n"))) + 2 > limit


# Lines of lengths around the limit, bare CRs and LFs among them, CRLF-terminated (as the
# reader hands them over); small limits make every boundary reachable.
_LINE = st.lists(st.sampled_from([b"a", b"\r", b"\n", b"xxxxx", b"\r\r", b"\n\n"]), max_size=12)


@settings(max_examples=2000)
@given(st.lists(_LINE.map(b"".join), min_size=1, max_size=8), st.integers(2, 40))
def test_the_line_length_check_finds_exactly_the_lines_split_finds(
    lines: list[bytes], limit: int
) -> None:
    joined = b"".join(line + b"\r\n" for line in lines)
    assert _longer_line(joined, limit) == _longest_split(joined, limit)


@pytest.mark.parametrize("length", [MAX_LINE - 2, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1])
@pytest.mark.parametrize("before", [b"", b"short\r\n", b"y" * 998 + b"\r\n"])
def test_a_line_is_refused_from_one_octet_past_the_limit(length: int, before: bytes) -> None:
    # MAX_LINE octets with CRLF, and one more for a stuffed dot: 999 octets of text pass.
    stream = before + b"x" * length + b"\r\nnext\r\n.\r\n"
    reader, rest = _read(stream, [])
    assert rest == b""
    refused = length + 2 > MAX_LINE + 1
    assert reader.result()[1] == (replies.DATA_LINE_TOO_LONG if refused else None)
    assert _longer_line(stream[:-3], MAX_LINE + 1) is refused
