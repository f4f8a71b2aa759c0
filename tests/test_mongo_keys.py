"""The MongoDB store's key escape (stores/mongo_keys.py): reversible for every
key, a no-op (the same object) when no key needs it, and what real ``bson``
makes of the stored form."""
from __future__ import annotations

import itertools

import bson
from bson.dbref import DBRef
from hypothesis import given, strategies as st

from queue_service.stores.mongo_keys import escape, escape_key, unescape, unescape_key

SPECIAL = ["$", ".", "\uff04", "\uff0e", "\uff3c"]


def test_every_short_key_over_the_special_characters_round_trips():
    """Exhaustive up to 4 characters over the characters the code touches
    (and one it does not): no key is lost, none collides with another."""
    alphabet = SPECIAL + ["a"]
    stored: dict[str, str] = {}
    for length in range(5):
        for chars in itertools.product(alphabet, repeat=length):
            key = "".join(chars)
            escaped = escape_key(key)
            form = key if escaped is None else escaped
            assert not form.startswith("$") and "." not in form, (key, form)
            back = unescape_key(form)
            assert (form if back is None else back) == key
            assert form not in stored, (key, stored.get(form))
            stored[form] = key
    assert len(stored) == sum(6 ** n for n in range(5))


@given(st.text())
def test_any_key_round_trips(key):
    escaped = escape_key(key)
    form = key if escaped is None else escaped
    assert not form.startswith("$") and "." not in form
    back = unescape_key(form)
    assert (form if back is None else back) == key


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet=st.sampled_from(SPECIAL + ["a", "b", "r", "e", "f"])), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_any_json_value_survives_bson_after_the_escape(value):
    """What a real server hands back (bson.encode then decode, default codec
    options) is, after unescape, the value that was written."""
    stored = bson.decode(bson.encode({"v": escape(value)}))["v"]
    assert unescape(stored) == value


def test_dbref_keys_decode_as_a_dbref_unless_escaped():
    value = {"link": {"$ref": "x", "$id": 1}, "rows": [{"$ref": "y", "$id": 2}]}
    raw = bson.decode(bson.encode(value))
    assert isinstance(raw["link"], DBRef) and isinstance(raw["rows"][0], DBRef)  # why the escape exists
    stored = bson.decode(bson.encode(escape(value)))
    assert stored == {"link": {"\uff04ref": "x", "\uff04id": 1}, "rows": [{"\uff04ref": "y", "\uff04id": 2}]}
    assert unescape(stored) == value


def test_what_is_stored_for_each_kind_of_key():
    assert escape({"$ref": 1, "a.b": 2, "x\uff04": 3, "\uff3c": 4, "a$b": 5, "plain": 6}) == {
        "\uff04ref": 1, "a\uff0eb": 2, "x\uff3c\uff04": 3, "\uff3c\uff3c": 4, "a$b": 5, "plain": 6}


def test_nested_objects_in_lists_and_key_order_are_kept():
    value = {"first": 1, "a.b": [{"$x": [{"c.d": None}]}, 7], "last": {"$y": True}}
    escaped = escape(value)
    assert list(escaped) == ["first", "a\uff0eb", "last"]
    assert escaped["a\uff0eb"] == [{"\uff04x": [{"c\uff0ed": None}]}, 7]
    assert unescape(escaped) == value and list(unescape(escaped)) == list(value)
    assert value == {"first": 1, "a.b": [{"$x": [{"c.d": None}]}, 7], "last": {"$y": True}}  # not changed in place


def test_nothing_to_escape_returns_the_same_objects():
    value = {"to": "a@b.c", "n": 1, "list": [{"k": "v.w"}, [1, "$x"]], "a$b": None}
    assert escape(value) is value and unescape(value) is value
    partly = {"keep": {"k": [1]}, "$x": 1}
    assert escape(partly)["keep"] is partly["keep"]  # an unchanged branch is shared, not copied
    for scalar in (None, 1, "a.b", "$x", 1.5, True):
        assert escape(scalar) is scalar and unescape(scalar) is scalar


def test_a_legacy_dbref_reads_back_as_the_object_it_was_written_as():
    """A document written before the escape existed: pymongo returns a DBRef."""
    stored = bson.decode(bson.encode({"p": {"$ref": "x", "$id": 1}, "q": [{"$ref": "y", "$id": "z"}]}))
    assert unescape(stored) == {"p": {"$ref": "x", "$id": 1}, "q": [{"$ref": "y", "$id": "z"}]}
