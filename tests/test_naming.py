"""Path templates: hostile field values never leave the output directory; names are never reused."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from callstream.errors import RecordingError
from callstream.storage.naming import (
    DEFAULT_TEMPLATE,
    MAX_COMPONENT,
    MAX_VALUE,
    METADATA_FIELDS,
    render_path,
    reserve,
    sanitize,
    validate_template,
)

WHEN = datetime(2024, 5, 1, 23, 59, 58, tzinfo=UTC)
SAFE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.+@=")
HOSTILE = ["../../x", "..", ".", "/", "/etc/passwd", "a/../../b", "\\..\\..\\x", "x\x00y",
           "\n\r\t\x7f", "..\\", ".hidden", "x.partial", "\u202e\u0301é漢字", "\ud800", "",
           "...", "a" * 10_000, "/" * 300, "." * 300, "-2", " ", "\x00" * 100]


def test_default_template() -> None:
    fields = {"callId": "c-1", "sessionId": "2"}
    assert render_path(DEFAULT_TEMPLATE, fields, when=WHEN) == PurePosixPath("2024-05-01/c-1-2")


def test_time_placeholders_are_utc() -> None:
    when = datetime(2024, 5, 2, 1, 2, 3, tzinfo=timezone(timedelta(hours=2)))  # 23:02:03 UTC
    template = "{year}/{month}/{day}/{date}_{time}_{datetime}"
    assert str(render_path(template, {}, when=when)) == (
        "2024/05/01/2024-05-01_230203_20240501T230203Z")


def test_every_metadata_field_is_a_placeholder() -> None:
    template = "-".join("{" + name + "}" for name in METADATA_FIELDS)
    fields = {name: str(i) for i, name in enumerate(METADATA_FIELDS)}
    assert str(render_path(template, fields, when=WHEN)) == "-".join(map(str, range(len(METADATA_FIELDS))))


def test_missing_and_empty_fields_are_unknown() -> None:
    assert str(render_path("{callId}/{agentId}", {"callId": ""}, when=WHEN)) == "unknown/unknown"


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError):
        render_path(DEFAULT_TEMPLATE, {}, when=datetime(2024, 5, 1))


@pytest.mark.parametrize("template", [
    "{date}/{callId}", "calls/{year}/{month}/{day}/{callId}-{sessionId}-{time}",
    "{ani}+{dnis}@{accountId}", "x",
])
def test_valid_templates(template: str) -> None:
    validate_template(template)


@pytest.mark.parametrize("template", [
    "", "{nope}", "{callid}", "{}", "{0}", "{callId.__class__}", "{callId[0]}", "{callId!r}",
    "{callId:>10}", "{callId", "callId}", "/{callId}", "{callId}/", "a//{callId}", "../{callId}",
    "{date}/../{callId}", "./{callId}", ".{callId}", "{callId}/..", "a..{callId}", "a b/{callId}",
    "a\\{callId}", "a\x00{callId}", "{{callId}}", "é/{callId}",
])
def test_invalid_templates(template: str) -> None:
    with pytest.raises(ValueError):
        validate_template(template)
    with pytest.raises(ValueError):
        render_path(template, {"callId": "c"}, when=WHEN)


@pytest.mark.parametrize("value", HOSTILE)
def test_sanitize(value: str) -> None:
    safe = sanitize(value)
    assert safe
    assert set(safe) <= SAFE
    assert ".." not in safe
    assert not safe.startswith(".")
    assert len(safe) <= MAX_VALUE


def test_long_values_stay_distinct() -> None:
    assert sanitize("a" * 100 + "1") != sanitize("a" * 100 + "2")
    assert len(sanitize("a" * 100)) == MAX_VALUE


def test_partial_suffix_cannot_collide() -> None:
    # NAME.EXT of one call must never be the NAME.partial.EXT of another
    assert render_path("{callId}", {"callId": "x.partial"}, when=WHEN).name != "x.partial"
    assert render_path("{callId}", {"callId": "x.PARTIAL"}, when=WHEN).name != "x.PARTIAL"


TEMPLATES = st.sampled_from([
    DEFAULT_TEMPLATE, "{callId}", "{callId}{sessionId}{ani}{dnis}/{agentId}.{productId}",
    "{year}/{callId}/{sessionId}/{dnis}", "{callId}.{sessionId}",
    "x" + "{callId}" * 10,
])
VALUES = st.one_of(st.text(), st.sampled_from(HOSTILE), st.text(alphabet="./\\\x00", max_size=50),
                   st.text(min_size=300, max_size=2000))


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=TEMPLATES,
       fields=st.dictionaries(st.sampled_from(METADATA_FIELDS), VALUES))
@example(template=DEFAULT_TEMPLATE, fields={"callId": "../../x", "sessionId": "../.."})
@example(template="{callId}", fields={"callId": "/"})
def test_rendered_path_stays_inside(tmp_path: Path, template: str, fields: dict) -> None:
    path = render_path(template, fields, when=WHEN)
    assert not path.is_absolute()
    assert path.parts
    assert len(path.parts) == template.count("/") + 1  # only the template makes directories
    for part in path.parts:
        assert part not in ("", ".", "..")
        assert not part.startswith(".")
        assert ".." not in part
        assert set(part) <= SAFE
        assert 0 < len(part) <= MAX_COMPONENT + 1
    assert len(str(path)) <= (MAX_COMPONENT + 2) * len(path.parts)
    output_dir = tmp_path.resolve()
    assert (output_dir / path).resolve().is_relative_to(output_dir)


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_reserve_creates_directories_and_partial(tmp_path: Path) -> None:
    r = reserve(tmp_path / "out", PurePosixPath("2024-05-01/c-1"), "wav")
    day = tmp_path / "out" / "2024-05-01"
    assert r.base == day / "c-1"
    assert (r.partial, r.final, r.sidecar) == (
        day / "c-1.partial.wav", day / "c-1.wav", day / "c-1.json")
    assert (r.root, r.number) == ("c-1", 1)
    assert names(day) == {"c-1.partial.wav"}
    assert r.partial.stat().st_size == 0


def test_reserve_in_a_row_never_reuses(tmp_path: Path) -> None:
    relative = PurePosixPath("d/c")
    got = [reserve(tmp_path, relative, "wav") for _ in range(5)]
    assert [r.base.name for r in got] == ["c", "c-2", "c-3", "c-4", "c-5"]
    assert [r.number for r in got] == [1, 2, 3, 4, 5]
    assert len({r.partial for r in got}) == 5


@pytest.mark.parametrize("existing", ["c.wav", "c.partial.wav", "c.json"])
def test_reserve_skips_existing_recordings(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"keep")
    r = reserve(tmp_path, PurePosixPath("c"), "wav")
    assert (r.base.name, r.number) == ("c-2", 2)
    assert (tmp_path / existing).read_bytes() == b"keep"
    assert names(tmp_path) == {existing, "c-2.partial.wav"}  # the probe left nothing behind


def test_reserve_skips_a_mix(tmp_path: Path) -> None:
    for name in ["c.wav", "c.json", "c-2.partial.wav", "c-3.json", "c-5.wav"]:
        (tmp_path / name).write_bytes(b"keep")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    first = reserve(tmp_path, PurePosixPath("c"), "wav")
    second = reserve(tmp_path, PurePosixPath("c"), "wav")
    assert (first.base.name, second.base.name) == ("c-4", "c-6")
    assert second.number == 6
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content


def test_reserve_other_extension_shares_the_sidecar_check(tmp_path: Path) -> None:
    wav = reserve(tmp_path, PurePosixPath("c"), "wav")
    wav.sidecar.write_text("{}")
    assert reserve(tmp_path, PurePosixPath("c"), "flac").base.name == "c-2"


@pytest.mark.parametrize("relative", ["", "/abs", "../x", "a/../b", ".hidden", "a/.b/c"])
def test_reserve_refuses_unsafe_relative_paths(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ValueError):
        reserve(tmp_path, PurePosixPath(relative), "wav")


def test_reserve_disk_failure(tmp_path: Path) -> None:
    (tmp_path / "day").write_bytes(b"")  # a file where the directory should be
    with pytest.raises(RecordingError, match="day") as info:
        reserve(tmp_path, PurePosixPath("day/c"), "wav")
    assert isinstance(info.value.__cause__, OSError)


def test_reserve_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("callstream.storage.naming.MAX_SIBLINGS", 3)
    for _ in range(3):
        reserve(tmp_path, PurePosixPath("c"), "wav")
    with pytest.raises(RecordingError):
        reserve(tmp_path, PurePosixPath("c"), "wav")


def test_reserve_probes_logarithmically_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The N-th stream of a name costs O(log N) probes, not N (issue 12, bug 6: 400 streams of
    one call made every create probe every name before it). Seen failing before the fix (the
    linear probe: 300 O_EXCL opens for the 301st name)."""
    relative = PurePosixPath("c")
    for _ in range(300):
        reserve(tmp_path, relative, "wav").release()
    probes = 0
    lexists, open_ = os.path.lexists, os.open

    def counted_lexists(path: object) -> bool:
        nonlocal probes
        probes += 1
        return lexists(path)  # type: ignore[arg-type]

    def counted_open(path: object, *args: object) -> int:
        nonlocal probes
        probes += 1
        return open_(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os.path, "lexists", counted_lexists)
    monkeypatch.setattr(os, "open", counted_open)
    r = reserve(tmp_path, relative, "wav")
    assert r.base.name == "c-301"
    assert probes <= 3 * 2 * 10 + 2  # 3 names per number, doubling then bisecting up to 512


def test_reserve_claims_past_a_concurrent_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name found free but claimed meanwhile (by another process) costs one more claim."""
    import callstream.storage.naming as naming

    for name in ["c.json", "c-2.json"]:
        (tmp_path / name).write_text("{}")
    first_free = naming._Names.first_free

    def racing(self: naming._Names) -> int:
        number = first_free(self)
        (tmp_path / f"c-{number}.partial.wav").write_bytes(b"other")
        return number

    monkeypatch.setattr(naming._Names, "first_free", racing)
    r = reserve(tmp_path, PurePosixPath("c"), "wav")
    assert r.base.name == "c-4"
    assert (tmp_path / "c-3.partial.wav").read_bytes() == b"other"


def test_reserved_file_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        r = reserve(tmp_path, PurePosixPath("c"), "wav")
    finally:
        os.umask(old)
    assert r.partial.stat().st_mode & 0o777 == 0o640
