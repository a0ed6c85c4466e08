"""Template keys: a key that does not fit stops `recognizer serve` before any write; a store
of release 0.1.0 upgrades on its first boot with its key; `keys encrypt` and `keys rotate`
survive SIGKILL at random points and leave a complete store readable with the right key."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recognizer.gallery.gallery import Gallery
from recognizer.gallery.index import VectorIndex
from recognizer.store.crypto import (
    KEY_ENV,
    MAGIC,
    NEW_KEY_ENV,
    AesGcmCipher,
    NullCipher,
    TemplateKeyError,
    key_check_value,
    key_id,
)
from recognizer.store.keys import SCHEME_AES, SCHEME_NONE
from recognizer.store.sealing import text_prefix
from recognizer.store.sqlite import SqliteStore, read_key_state
from recognizer.v1 import gate_pb2
from tests import personal, procserver
from tests.conftest import ENV_KEYS, require_models
from tests.keyfixtures import (
    DIM,
    MODEL,
    RELEASE,
    RELEASE_KEY,
    Person,
    add_personal,
    b64,
    build_gallery,
    copy_release,
    read_personal,
    read_templates,
    scan,
    snapshot,
)

K1, K2 = bytes(range(1, 33)), bytes(range(2, 34))
BOOT_LIMIT_S = 10.0


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, NEW_KEY_ENV)}
    return {
        **env,
        "RECOGNIZER_API_KEYS": ENV_KEYS,
        "RECOGNIZER_METRICS_PORT": "0",
        "RECOGNIZER_ALLOW_PLAINTEXT": "true",  # the key checks below are what these test
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


# --- refusal at boot --------------------------------------------------------------------------


def upgraded(dest: Path) -> Path:
    """The encrypted fixture after one boot with its key: it has a KCV now."""
    copy_release("encrypted", dest)
    SqliteStore(dest / "recognizer.db", AesGcmCipher(RELEASE_KEY)).close()
    return dest


REFUSALS = [
    # (data directory, environment, a phrase the message must hold)
    ("encrypted", {}, f"set {KEY_ENV}"),
    ("encrypted", {KEY_ENV: b64(bytes(32))}, "does not open this store"),
    ("encrypted", {KEY_ENV: "not base64!"}, "not valid base64"),
    ("encrypted", {KEY_ENV: b64(b"sixteen bytes...")}, "must decode to 32 bytes"),
    ("plain", {KEY_ENV: b64(RELEASE_KEY)}, "keys encrypt"),
    ("upgraded", {KEY_ENV: b64(bytes(32))}, "wrong key"),
    ("upgraded", {}, f"set {KEY_ENV}"),
    ("upgraded", {KEY_ENV: b64(RELEASE_KEY), NEW_KEY_ENV: b64(K1)}, "not a key of this store"),
]


@pytest.mark.parametrize(("kind", "env", "says"), REFUSALS)
def test_serve_refuses_a_key_that_does_not_fit(
    tmp_path: Path, kind: str, env: dict[str, str], says: str
) -> None:
    data = (
        upgraded(tmp_path / "data") if kind == "upgraded" else copy_release(kind, tmp_path / "data")
    )
    before = snapshot(data)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "recognizer.cli", "serve", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
    )
    try:
        _, err = proc.communicate(timeout=BOOT_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"serve did not exit within {BOOT_LIMIT_S}s with {kind} / {sorted(env)}")
    elapsed = time.monotonic() - t0
    assert proc.returncode not in (0, None), err
    assert elapsed < BOOT_LIMIT_S
    assert says in err, err
    assert snapshot(data) == before, "a refused boot changed the data directory"


# --- upgrade of release 0.1.0 -----------------------------------------------------------------


def test_encrypted_release_store_upgrades_on_first_boot_with_its_key(tmp_path: Path) -> None:
    data = copy_release("encrypted", tmp_path / "data")
    assert read_key_state(data / "recognizer.db").scheme == ""  # 0.1.0 recorded no key
    vectors = np.load(RELEASE / "vectors.npy")
    ids = json.loads((RELEASE / "encrypted-ids.json").read_text())

    store = SqliteStore(data / "recognizer.db", AesGcmCipher(RELEASE_KEY))
    assert store.schema_upgraded_from == 1
    state = store.key_state()
    assert (state.scheme, state.key_id) == (SCHEME_AES, key_id(RELEASE_KEY))
    assert state.kcv == key_check_value(RELEASE_KEY)
    for k, iid in enumerate(ids):
        got = np.stack([r.vector for r in store.templates(iid, MODEL)])
        np.testing.assert_allclose(got, vectors[2 * k : 2 * k + 2], atol=1e-6)
    g = Gallery(store, MODEL, DIM, data / "faces-default.faiss")
    g.open()  # the plaintext index file of 0.1.0 is sealed now
    assert g.identify(vectors[3], 1)[0].identity_id == ids[1]
    g.close()
    loaded = VectorIndex.load(data / "faces-default.faiss", cipher=AesGcmCipher(RELEASE_KEY))
    assert loaded is not None and loaded[0].sealed_with == key_id(RELEASE_KEY)
    assert VectorIndex.load(data / "faces-default.faiss") is None  # useless without the key
    stored = list(read_templates(data, AesGcmCipher(RELEASE_KEY)).values())
    assert not scan(data, [*vectors, *stored])
    assert {p.stat().st_mode & 0o777 for p in data.iterdir()} == {0o600}

    # From now on the KCV decides, before the templates are touched.
    with pytest.raises(TemplateKeyError, match="wrong key"):
        SqliteStore(data / "recognizer.db", AesGcmCipher(bytes(32)))
    with pytest.raises(TemplateKeyError, match=f"set {KEY_ENV}"):
        SqliteStore(data / "recognizer.db", NullCipher())


def test_plain_release_store_upgrades_without_a_key(tmp_path: Path) -> None:
    data = copy_release("plain", tmp_path / "data")
    vectors = np.load(RELEASE / "vectors.npy")
    store = SqliteStore(data / "recognizer.db", NullCipher())
    assert store.key_state().scheme == SCHEME_NONE
    np.testing.assert_allclose(read_templates_open(store), vectors, atol=1e-6)
    store.close()
    with pytest.raises(TemplateKeyError, match="keys encrypt"):
        SqliteStore(data / "recognizer.db", AesGcmCipher(RELEASE_KEY))


def read_templates_open(store: SqliteStore) -> np.ndarray:
    return np.concatenate([v for _, v in store.iter_templates(MODEL)])


def test_real_server_upgrades_the_encrypted_release_store(tmp_path: Path) -> None:
    require_models("default")
    data = copy_release("encrypted", tmp_path / "data")
    server = procserver.start(data, extra_env={KEY_ENV: b64(RELEASE_KEY)})
    try:
        c = server.client()
        g = c.admin.GetMetrics(gate_pb2.GetMetricsRequest(), metadata=c.metadata).gallery
        c.close()
        assert (g.store_templates, g.index_size, g.identities, g.consistent) == (6, 6, 3, True)
    finally:
        assert server.terminate(60) == 0
    state = read_key_state(data / "recognizer.db")
    assert state.scheme == SCHEME_AES and state.kcv == key_check_value(RELEASE_KEY)
    assert read_key_state(data / "recognizer.db").pending_kcv == ""
    stored = list(read_templates(data, AesGcmCipher(RELEASE_KEY)).values())
    assert not scan(data, [*np.load(RELEASE / "vectors.npy"), *stored])
    assert data.stat().st_mode & 0o777 == 0o700


def test_new_store_records_its_key_and_a_half_rotated_store_serves(tmp_path: Path) -> None:
    originals = build_gallery(tmp_path, 40, AesGcmCipher(K1))
    state = read_key_state(tmp_path / "recognizer.db")
    assert (state.key_id, state.kcv) == (key_id(K1), key_check_value(K1))
    # Half a rotation: the new key is recorded, some rows are resealed.
    store = SqliteStore(tmp_path / "recognizer.db", AesGcmCipher(K1))
    store.begin_rekey(key_id(K2), key_check_value(K2))
    store.close()
    store = SqliteStore(tmp_path / "recognizer.db", AesGcmCipher(K1, K2))
    assert store.reseal(0, 15)[1] == 15
    g = Gallery(store, MODEL, DIM, tmp_path / "faces-default.faiss")
    g.open()
    label, vec = next(iter(originals.items()))
    assert g.identify(vec, 1)[0].label == label
    g.close()
    assert read_templates(tmp_path, AesGcmCipher(K1, K2)).keys() == originals.keys()
    for ring in (AesGcmCipher(K1), AesGcmCipher(K2)):
        with pytest.raises(TemplateKeyError, match=r"unfinished|re-keyed"):
            SqliteStore(tmp_path / "recognizer.db", ring)


# --- keys encrypt / rotate under SIGKILL ------------------------------------------------------


BATCH = 10
REKEY_ARGS = ("--batch", str(BATCH), "--progress", "--data-dir")


def run_keys(args: list[str], data: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "recognizer.cli", "keys", *args, *REKEY_ARGS, str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(**env),
    )


def unsealed(data: Path, key: bytes) -> int:
    """Templates not yet sealed with `key`."""
    prefix = MAGIC + bytes.fromhex(key_id(key))
    with sqlite3.connect(data / "recognizer.db") as c:
        sql = "SELECT COUNT(*) FROM templates WHERE substr(vector, 1, ?) != ?"
        return int(c.execute(sql, (len(prefix), prefix)).fetchone()[0])


def kill_at_random(proc: subprocess.Popen[str], rng: random.Random, batches_left: int) -> bool:
    """SIGKILL during start-up (a random delay) or after a random number of batches, at most
    half of those left so that the next runs still have work to be killed in. True if the
    process was still running."""
    if rng.random() < 0.25:
        time.sleep(rng.uniform(0.05, 0.5))
    else:
        wanted = rng.randint(1, max(1, batches_left // 2))
        assert proc.stdout is not None
        for seen, _ in enumerate(proc.stdout, 1):
            if seen >= wanted:
                break
    killed = proc.poll() is None
    if killed:
        proc.kill()
    proc.communicate(timeout=30)
    return killed


def ring_for(data: Path, old: bytes | None, new: bytes) -> AesGcmCipher | NullCipher:
    """The keys the store needs in its present state (before, during or after the re-key)."""
    state = read_key_state(data / "recognizer.db")
    if state.pending_kcv:
        return AesGcmCipher(*[k for k in (old, new) if k])
    if state.kcv == key_check_value(new):
        return AesGcmCipher(new)
    return AesGcmCipher(old) if old else NullCipher()


PERSONAL = 40  # identities with personal fields (plates, payments, decisions, sightings, audit)


def rekey_kill_loop(
    tmp: Path, args: list[str], old: bytes | None, new: bytes, env: dict[str, str], kills: int
) -> tuple[Path, dict[int, np.ndarray], dict[str, Person]]:
    data = tmp / "data"
    data.mkdir()
    originals = build_gallery(data, 10_000, AesGcmCipher(old) if old else None)
    people = add_personal(data, AesGcmCipher(old) if old else None, PERSONAL)
    rng = random.Random(len(args) * 1000 + kills)
    killed, mid_way = 0, 0
    for _ in range(kills * 4):  # bounded: a run that finishes first is not a kill
        if killed == kills:
            break
        left = unsealed(data, new) // BATCH
        if kill_at_random(run_keys(args, data, env), rng, left):
            killed += 1
            mid_way += bool(read_key_state(data / "recognizer.db").pending_kcv)
        # After every kill the store is complete and readable with the keys of its state.
        got = read_templates(data, ring_for(data, old, new))
        assert got.keys() == originals.keys()
        for label, vec in originals.items():
            np.testing.assert_array_equal(got[label], vec)
        # Personal fields too, plates found by their index under either key.
        assert read_personal(data, ring_for(data, old, new), list(people)) == people
    assert killed == kills, f"only {killed} of {kills} runs were killed before finishing"
    assert mid_way, "no kill landed between the start and the end of the re-key"
    done = run_keys(args, data, env)
    _, err = done.communicate(timeout=120)
    assert done.returncode == 0, err
    return data, originals, people


def check_final(
    data: Path, originals: dict[int, np.ndarray], people: dict[str, Person], new: bytes
) -> None:
    state = read_key_state(data / "recognizer.db")
    assert (state.scheme, state.key_id, state.pending_kcv) == (SCHEME_AES, key_id(new), "")
    got = read_templates(data, AesGcmCipher(new))  # the new key alone reads everything
    assert got.keys() == originals.keys()
    for label, vec in originals.items():
        np.testing.assert_array_equal(got[label], vec)
    loaded = VectorIndex.load(data / "faces-default.faiss", cipher=AesGcmCipher(new))
    assert loaded is not None, "the index file must open with the new key"
    assert loaded[0].sealed_with == key_id(new)
    assert set(loaded[0].labels().tolist()) == set(originals)
    assert not list(data.glob(".*.tmp")), "a killed run's temp file was left behind"
    assert not scan(data, list(originals.values()))
    assert read_personal(data, AesGcmCipher(new), list(people)) == people
    # Plates and payment references (the synthetic names, "p10", are too short to look for:
    # the prefix check below covers them).
    pats = personal.needles([], [p[1] for p in people.values()], [p[2] for p in people.values()])
    assert personal.scan([data], pats) == []
    prefix = text_prefix(key_id(new))
    with sqlite3.connect(data / "recognizer.db") as c:
        for table, column in (("identities", "display_name"), ("plates", "plate_text"),
                              ("payments", "payment_ref"), ("decisions", "inputs"),
                              ("audit", "detail"), ("sightings", "gate_id")):  # fmt: skip
            left = c.execute(
                f"SELECT COUNT(*) FROM {table} WHERE substr({column}, 1, 16) <> ?", (prefix,)
            )
            assert left.fetchone()[0] == 0, f"{table} rows not sealed under the new key"


def test_keys_encrypt_survives_sigkill(tmp_path: Path) -> None:
    env = {KEY_ENV: b64(K1)}
    data, originals, people = rekey_kill_loop(tmp_path, ["encrypt"], None, K1, env, 5)
    check_final(data, originals, people, K1)
    again = run_keys(["encrypt"], data, env)  # a rerun after success is a no-op
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and "nothing to do" in out


def test_keys_rotate_survives_sigkill(tmp_path: Path) -> None:
    env = {KEY_ENV: b64(K1), NEW_KEY_ENV: b64(K2)}
    data, originals, people = rekey_kill_loop(tmp_path, ["rotate"], K1, K2, env, 5)
    check_final(data, originals, people, K2)
    # The old key is refused now; a rerun is a no-op.
    with pytest.raises(TemplateKeyError, match="wrong key"):
        SqliteStore(data / "recognizer.db", AesGcmCipher(K1))
    again = run_keys(["rotate"], data, env)
    out, _ = again.communicate(timeout=60)
    assert again.returncode == 0 and "nothing to do" in out


def test_keys_check(tmp_path: Path) -> None:
    data = upgraded(tmp_path / "data")
    before = snapshot(data)

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "recognizer.cli", "keys", "check", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            env=clean_env(**env),
            timeout=60,
        )

    ok = check(**{KEY_ENV: b64(RELEASE_KEY)})
    assert ok.returncode == 0 and key_id(RELEASE_KEY) in ok.stdout
    bad = check(**{KEY_ENV: b64(K1)})
    assert bad.returncode == 2 and "wrong key" in bad.stderr
    assert snapshot(data) == before
