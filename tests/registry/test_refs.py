from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandem.errors import UsageError
from tandem.registry import ModelRef, parse_ref, validate_name
from tandem.registry.refs import validate_alias

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True).filter(
    lambda s: ".." not in s
)
aliases = names.filter(lambda s: not s.isdigit())
versions = st.integers(min_value=1, max_value=2**31 - 1)
refs = st.one_of(
    names,
    st.builds(lambda n, v: f"{n}:{v}", names, versions),
    st.builds(lambda n, a: f"{n}@{a}", names, aliases),
)


@given(refs)
def test_valid_refs_round_trip(text: str) -> None:
    ref = parse_ref(text)
    assert str(ref) == text
    assert parse_ref(str(ref)) == ref


@given(st.text(alphabet=st.sampled_from("ab0.:@/-_\\ \n³é"), max_size=12))
def test_any_text_parses_to_a_canonical_ref_or_a_usage_error(text: str) -> None:
    try:
        ref = parse_ref(text)
    except UsageError as exc:
        assert "accepted forms" in str(exc)
    else:
        assert parse_ref(str(ref)) == ref
        assert "/" not in ref.name and ".." not in ref.name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fraud", ModelRef("fraud")),
        ("fraud:3", ModelRef("fraud", version=3)),
        ("fraud:007", ModelRef("fraud", version=7)),
        ("fraud@champion", ModelRef("fraud", alias="champion")),
        ("fraud@latest", ModelRef("fraud", alias="latest")),
    ],
)
def test_parse_ref_forms(text: str, expected: ModelRef) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "../x",
        "a:0",
        "a:-1",
        "a@",
        "a:",
        "a:b",
        "",
        "a" * 65,
        "a/b",
        "a:1:2",
        "a@b@c",
        "a@3",
        "a:" + "9" * 11,
        "a:2147483648",
        ".hidden",
        "a..b",
        "fraud\n",
        "a:³",
    ],
)
def test_parse_ref_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="accepted forms: NAME, NAME:VERSION"):
        parse_ref(text)


def test_rejection_names_the_value_and_the_rule() -> None:
    with pytest.raises(UsageError) as caught:
        validate_name("a/b", "tag key")
    assert "'a/b'" in str(caught.value)
    assert "tag key" in str(caught.value)
    assert "1 to 64 characters" in str(caught.value)


def test_names_up_to_64_characters_are_valid() -> None:
    assert validate_name("a" * 64) == "a" * 64
    with pytest.raises(UsageError):
        validate_name("a" * 65)


@pytest.mark.parametrize(("alias", "hint"), [("3", "NAME:3"), ("latest", "reserved")])
def test_alias_rules(alias: str, hint: str) -> None:
    with pytest.raises(UsageError, match=hint):
        validate_alias(alias)


def test_model_ref_validates_on_construction() -> None:
    with pytest.raises(UsageError, match="not both"):
        ModelRef("fraud", version=1, alias="champion")
    with pytest.raises(UsageError, match="out of range"):
        ModelRef("fraud", version=0)
    with pytest.raises(UsageError, match="invalid model name"):
        ModelRef("../fraud")
