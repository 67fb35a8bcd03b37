"""Let no one in: the local cluster and its dashboard listen on 127.0.0.1 only; a tls://
scheduler works with our certificates and refuses a client without one; no store or run
file is world-writable, even under a umask of 0."""
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import emocache
from featurize import datasets
from featurize.demo import write_demo_corpus
from featurize.pipeline import dask_client, run_features, tls_security
from store.errors import InputError
from tests.test_dask_cluster import stop_processes

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


def test_local_cluster_and_dashboard_listen_on_loopback_only():
    client, cluster = dask_client(1, None)
    try:
        info = client.scheduler_info()
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
        assert client.dashboard_link.startswith("http://127.0.0.1:")
    finally:
        client.close()
        cluster.close()


def _certs(d: Path) -> dict:
    """A throwaway CA and one node certificate it signed (SAN 127.0.0.1), plus a stranger's
    self-signed certificate the CA never saw."""
    if shutil.which("openssl") is None:
        pytest.skip("the TLS test makes its certificates with the openssl command, not found")

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=emocache-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "node.pem", "-days", "1", "-extfile", "san.ext")
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "stranger.key", "-out",
        "stranger.pem", "-days", "1", "-subj", "/CN=127.0.0.1")
    return {k: str(d / f) for k, f in (("ca", "ca.pem"), ("cert", "node.pem"), ("key", "node.key"),
                                       ("scert", "stranger.pem"), ("skey", "stranger.key"))}


def test_tls_scheduler_with_certificates_and_a_refused_stranger(tmp_path):
    from distributed import Client
    from distributed.security import Security

    c = _certs(tmp_path)
    tls = ["--tls-ca-file", c["ca"], "--tls-cert", c["cert"], "--tls-key", c["key"]]
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    logs = open(tmp_path / "dask.log", "w")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--protocol", "tls",
             "--no-dashboard", "--scheduler-file", str(sched_file), *tls],
            env=env, stdout=logs, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while not sched_file.is_file():
            assert time.monotonic() < deadline and procs[0].poll() is None, "scheduler did not start"
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
             "--no-dashboard", "--local-directory", str(tmp_path / "w"), *tls],
            env=env, stdout=logs, stderr=subprocess.STDOUT))
        security = tls_security(c["ca"], c["cert"], c["key"])
        with Client(address, security=security, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)

        # no certificate at all, and a certificate our CA did not sign: both refused
        with pytest.raises(Exception):
            Client(address.replace("tls://", "tcp://"), timeout=5)
        with pytest.raises(Exception):
            Client(address, security=Security(tls_ca_file=c["ca"], tls_client_cert=c["scert"],
                                              tls_client_key=c["skey"], require_encryption=True),
                   timeout=5)
        with pytest.raises(InputError, match="needs certificates"):
            dask_client(None, address)

        corpus = tmp_path / "corpus"
        write_demo_corpus(corpus, n=2, seconds=1.0, seed=2)
        rows = datasets.build("demo", corpus)
        s = run_features(rows, tmp_path / "store", ["logmel"], scheduler=address, security=security,
                         progress=False)
        assert (s.done, s.failed_total) == (2, 0)
    finally:
        stop_processes(procs)
        logs.close()


def test_tls_flags_must_come_together(tmp_path):
    with pytest.raises(InputError, match="--tls-key"):
        tls_security(str(tmp_path / "ca.pem"), str(tmp_path / "c.pem"), None)


def test_no_world_writable_files_even_with_umask_0(tmp_path):
    corpus = tmp_path / "corpus"
    write_demo_corpus(corpus, n=1, seconds=1.0, seed=4)
    store = tmp_path / "store"
    emocache("features", "--input", corpus, "--store", store, "--extractors", "mfcc", "--scheduler", "inline",
             "--quiet", preexec_fn=lambda: os.umask(0))
    loose = [str(q) for q in store.rglob("*") if q.stat().st_mode & stat.S_IWOTH]
    assert loose == []
    assert len(list(store.rglob("*"))) > 10
