"""Bearer-token auth (UNAUTHENTICATED without it, health stays open) and TLS with a self-signed certificate."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import numpy as np
import pytest
from conftest import FakePolicy, batch_of, make_obs
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vla.client import RemotePolicy


def test_token_auth(server_factory):
    policy = FakePolicy()
    srv = server_factory(policy, token="s3cret")
    addr = f"127.0.0.1:{srv.port}"
    for token in (None, "wrong", "s3cret "):
        with RemotePolicy(addr, token=token, retries=0) as remote:
            with pytest.raises(grpc.RpcError) as e:
                remote.info()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                remote.metrics()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with RemotePolicy(addr, token="s3cret") as remote:
        obs = make_obs(3)
        np.testing.assert_array_equal(remote.predict(obs), policy.predict(batch_of([obs]))[0])
        with remote.session() as s:
            assert s.step(obs).step == 0
        cameras = remote.info()["cameras"]
    with RemotePolicy(addr, token=None) as anon:  # streaming is guarded too
        anon._info = {"cameras": cameras}
        with pytest.raises(grpc.RpcError) as e:
            anon.session().step(make_obs(0))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        check = health_pb2_grpc.HealthStub(anon.channel).Check(health_pb2.HealthCheckRequest())
        assert check.status == health_pb2.HealthCheckResponse.SERVING  # probes need no secret


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for localhost, made with the openssl CLI (the cryptography package is absent)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_tls(server_factory, cert):
    cert_path, key_path = cert
    policy = FakePolicy()
    srv = server_factory(policy, tls_cert=str(cert_path), tls_key=str(key_path), token="t")
    with RemotePolicy(f"localhost:{srv.port}", tls=str(cert_path), token="t") as remote:
        obs = make_obs(5)
        np.testing.assert_array_equal(remote.predict(obs), policy.predict(batch_of([obs]))[0])
    with RemotePolicy(f"127.0.0.1:{srv.port}", token="t", retries=0, timeout=3) as plain:  # no TLS: refused
        with pytest.raises(grpc.RpcError) as e:
            plain.info()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
