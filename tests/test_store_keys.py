"""Keys and ids: the names that decide where features live and whether old ones survive."""
import hashlib
import json
import random

import pytest

from store.keys import (MAX_ID_LEN, canonical_json, file_sha256, is_safe_name, key_from_provenance, make_key,
                        sanitize_id)


@pytest.mark.parametrize("raw", ["clip_001", "A-b.c", "30-3-1", "video.mp4", "x" * MAX_ID_LEN])
def test_safe_ids_pass_unchanged(raw):
    assert sanitize_id(raw) == raw


@pytest.mark.parametrize("raw", ["../etc/passwd", "a/b", "..", ".hidden", "", "...", "///", "a\x00b",
                                 "a\nb", "über straße", "x" * 400, "manifest.jsonl", "extractor.json",
                                 "\u202e evil", "a..b", "-"])
def test_unsafe_ids_become_safe_folder_names(raw):
    out = sanitize_id(raw)
    assert out and is_safe_name(out)
    assert "/" not in out and ".." not in out and not out.startswith(".")
    assert len(out) <= MAX_ID_LEN + 9


def test_changed_ids_carry_a_hash_of_the_raw_id():
    raw = "speaker 1/clip 2"
    expected = hashlib.sha256(raw.encode()).hexdigest()[:8]
    assert sanitize_id(raw) == f"speaker_1_clip_2-{expected}"


def test_ids_that_clean_to_the_same_text_stay_distinct():
    raws = ["a b", "a_b", "a/b", "a?b", "a..b", "a.b", "x" * 200, "x" * 201]
    outs = [sanitize_id(r) for r in raws]
    assert len(set(outs)) == len(raws)


def test_long_ids_are_truncated_with_a_hash():
    out = sanitize_id("y" * 1000)
    assert out.startswith("y" * MAX_ID_LEN + "-") and len(out) == MAX_ID_LEN + 9


def test_random_strings_always_give_safe_ids():
    rng = random.Random(7)
    alphabet = "ab./\\ \x00\x7f\t-_.é中😀" + "..."
    for _ in range(2000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        out = sanitize_id(raw)
        assert is_safe_name(out), (raw, out)
        assert sanitize_id(out) == out  # a sanitized id is a fixed point


def test_canonical_json_is_order_free_and_compact():
    a = canonical_json({"b": 1, "a": [1, 2], "c": {"z": "é", "y": None}})
    b = canonical_json({"c": {"y": None, "z": "é"}, "a": [1, 2], "b": 1})
    assert a == b == '{"a":[1,2],"b":1,"c":{"y":null,"z":"\\u00e9"}}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_make_key_hashes_params_weights_and_libraries():
    params, libs = {"size": 112, "margin": 0.4}, {"mediapipe": "0.10.14", "numpy": "2.1.0"}
    body = json.dumps({"params": params, "weights_sha256": "ab" * 32, "libraries": libs},
                      sort_keys=True, separators=(",", ":"))
    key = make_key("3", params, "ab" * 32, libs)
    assert key == "3-" + hashlib.sha256(body.encode()).hexdigest()[:8]
    assert make_key("3", dict(reversed(list(params.items()))), "ab" * 32, libs) == key
    others = {
        make_key("3", {**params, "margin": 0.5}, "ab" * 32, libs),
        make_key("3", params, "cd" * 32, libs),
        make_key("3", params, None, libs),
        make_key("3", params, "ab" * 32, {**libs, "numpy": "2.2.0"}),
        make_key("4", params, "ab" * 32, libs),
    }
    assert key not in others and len(others) == 5


def test_make_key_rejects_a_version_that_is_not_a_folder_name():
    with pytest.raises(ValueError):
        make_key("1/2", {}, None, {})


def test_key_from_provenance_recomputes_and_needs_every_input():
    prov = {"extractor": "mfcc", "version": "1", "params": {"n": 13}, "weights_sha256": None,
            "libraries": {"librosa": "0.10.2"}}
    assert key_from_provenance(prov) == make_key("1", {"n": 13}, None, {"librosa": "0.10.2"})
    with pytest.raises(ValueError, match="libraries"):
        key_from_provenance({k: v for k, v in prov.items() if k != "libraries"})


def test_file_sha256_matches_hashlib_on_a_multi_block_file(tmp_path):
    path = tmp_path / "w.bin"
    payload = random.Random(1).randbytes(3 * (1 << 20) + 17)
    path.write_bytes(payload)
    assert file_sha256(path) == hashlib.sha256(payload).hexdigest()
