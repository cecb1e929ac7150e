"""A SPIFFE *development* authority and Workload API server — for ``taskcreds demo`` and tests only.

In a cluster, workload identities come from SPIRE (or another SPIFFE implementation) through
the SPIFFE CSI driver; nothing in this module is ever part of that path. It exists so the whole
flow can run on one machine with nothing installed: it mints real X.509-SVIDs and JWT-SVIDs
(ECDSA P-256, shaped like SPIRE's) and serves them over the real Workload API (gRPC on a unix
socket), so the sidecar and the broker run the same code against it as against SPIRE.

It refuses to start unless asked for explicitly: ``DevAuthority(allow=True)`` or
``TASKCREDS_DEV_AUTHORITY=1`` in the environment.

Error tree::

    DevAuthorityError        anything this module refuses (bad SPIFFE ID, wrong trust domain, bad JWT)
      DevAuthorityRefused    constructed without being allowed to
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from google.protobuf import struct_pb2
from spiffe._proto import workload_pb2, workload_pb2_grpc

from taskcreds.logs import fields
from taskcreds.svid import SvidError, X509SvidMaterial, parse_spiffe_id

__all__ = [
    "DevAuthority",
    "DevAuthorityError",
    "DevAuthorityRefused",
    "WorkloadApiServer",
    "X509SvidMaterial",
    "ENV_DEV_AUTHORITY",
]

#: set to "1" to allow the development authority outside tests (``taskcreds demo`` sets it)
ENV_DEV_AUTHORITY = "TASKCREDS_DEV_AUTHORITY"
#: the Workload API's security header (SPIFFE Workload Endpoint spec); calls without it are refused
WORKLOAD_API_HEADER = ("workload.spiffe.io", "true")

_log = logging.getLogger(__name__)
_DER = serialization.Encoding.DER
_BACKDATE = timedelta(seconds=30)  # tolerate small clock skew between peers, as SPIRE does
_MIN_REFRESH = 0.2  # seconds: floor for the Workload API's periodic re-issue


class DevAuthorityError(Exception):
    """Something the development authority refuses; the message says what and what it accepts."""


class DevAuthorityRefused(DevAuthorityError):
    """The development authority was started without being explicitly allowed to."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _SigningKey:
    """One CA (X.509) or one JWT signing key, kept in memory only."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate | None, kid: str) -> None:
        self.key = key
        self.cert = cert
        self.kid = kid

    def __repr__(self) -> str:  # never show the key
        return f"_SigningKey(kid={self.kid!r})"


class DevAuthority:
    """A development-only SPIFFE authority: one trust domain, an in-memory CA and JWT key.

    Thread-safe: the Workload API server mints from its own thread while tests rotate from theirs.
    """

    def __init__(self, trust_domain: str = "taskcreds.local", *, allow: bool = False,
                 svid_ttl: float = 3600.0, now: Callable[[], datetime] | None = None,
                 ca_ttl: float = 7 * 86400.0) -> None:
        if not allow and os.environ.get(ENV_DEV_AUTHORITY) != "1":
            raise DevAuthorityRefused(
                "the taskcreds development SPIFFE authority is for `taskcreds demo` and tests only; "
                "in a cluster, workload identities come from SPIRE through the SPIFFE CSI driver. "
                f"To use it anyway, construct it with allow=True or set {ENV_DEV_AUTHORITY}=1")
        try:
            td, path = parse_spiffe_id(f"spiffe://{trust_domain}")
        except SvidError:
            raise DevAuthorityError(f"trust domain {trust_domain!r} is invalid: expected lowercase letters, "
                                    "digits, '.', '-' and '_' (e.g. 'taskcreds.local')") from None
        if path:
            raise DevAuthorityError(f"trust domain {trust_domain!r} must not contain '/'")
        if svid_ttl <= 0 or ca_ttl <= 0:
            raise DevAuthorityError(f"svid_ttl={svid_ttl} and ca_ttl={ca_ttl} must be positive seconds")
        self.trust_domain: str = td
        self.svid_ttl = float(svid_ttl)
        self._ca_ttl = float(ca_ttl)
        self._now = now or _utcnow
        self._lock = threading.Lock()
        self._cas: list[_SigningKey] = []  # oldest first; the last one signs
        self._jwt_keys: list[_SigningKey] = []
        self.rotate_ca()

    def __repr__(self) -> str:
        return f"DevAuthority(trust_domain={self.trust_domain!r}, cas={len(self._cas)})"

    # --- trust bundles -------------------------------------------------------------------------
    def bundle_der(self) -> tuple[bytes, ...]:
        """Every CA certificate of the trust domain (old ones stay after :meth:`rotate_ca`)."""
        with self._lock:
            return tuple(ca.cert.public_bytes(_DER) for ca in self._cas if ca.cert is not None)

    def bundle_pem(self) -> bytes:
        with self._lock:
            return b"".join(ca.cert.public_bytes(serialization.Encoding.PEM)
                            for ca in self._cas if ca.cert is not None)

    def jwt_bundle(self) -> dict[str, Any]:
        """The JWT bundle as a JWKS document; every key carries its ``kid``."""
        with self._lock:
            keys = list(self._jwt_keys)
        out = []
        for k in keys:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(k.key.public_key(), as_dict=True)
            jwk.update({"kid": k.kid, "use": "jwt-svid", "alg": "ES256"})
            out.append(jwk)
        return {"keys": out}

    def rotate_ca(self) -> None:
        """Make a new CA and JWT key that sign from now on; the old ones stay in the bundles."""
        now = self._now()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "taskcreds development authority"),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, str(len(self._cas) + 1))])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + timedelta(seconds=self._ca_ttl))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        jwt_key = ec.generate_private_key(ec.SECP256R1())
        with self._lock:
            self._cas.append(_SigningKey(key, cert, ski.digest.hex()[:16]))
            self._jwt_keys.append(_SigningKey(jwt_key, None, _kid(jwt_key)))

    # --- SVIDs ---------------------------------------------------------------------------------
    def _check_id(self, spiffe_id: str) -> str:
        try:
            td, path = parse_spiffe_id(spiffe_id)
        except SvidError as exc:
            raise DevAuthorityError(str(exc)) from None
        if td != self.trust_domain:
            raise DevAuthorityError(f"{spiffe_id!r} is not in trust domain {self.trust_domain!r}: "
                                    f"expected spiffe://{self.trust_domain}/<path>")
        if not path:
            raise DevAuthorityError(f"{spiffe_id!r} names the trust domain itself: a workload ID needs a "
                                    f"path, e.g. spiffe://{self.trust_domain}/ns/default/sa/agent")
        return spiffe_id

    def mint_x509_svid(self, spiffe_id: str, ttl: float | None = None, *,
                       extended_key_usage: Sequence[ObjectIdentifier] | None = None) -> X509SvidMaterial:
        """A fresh X.509-SVID shaped like SPIRE's: ECDSA P-256, CA=false, digitalSignature only,
        EKU serverAuth+clientAuth, the SPIFFE ID as the only URI SAN and no common name.

        ``extended_key_usage`` exists for tests that need a deliberately wrong SVID.
        """
        self._check_id(spiffe_id)
        lifetime = self.svid_ttl if ttl is None else float(ttl)
        if lifetime <= 0:
            raise DevAuthorityError(f"ttl={ttl} must be a positive number of seconds")
        eku = list(extended_key_usage) if extended_key_usage is not None else [
            ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        now = self._now().replace(microsecond=0)  # certificates hold whole seconds
        key = ec.generate_private_key(ec.SECP256R1())
        with self._lock:
            ca = self._cas[-1]
            bundle = tuple(c.cert.public_bytes(_DER) for c in self._cas if c.cert is not None)
        assert ca.cert is not None
        not_after = min(now + timedelta(seconds=lifetime), ca.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "taskcreds development")]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
        )
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        cert = builder.sign(ca.key, hashes.SHA256())
        return X509SvidMaterial(
            spiffe_id=spiffe_id,
            chain_der=(cert.public_bytes(_DER),),
            key_der=key.private_bytes(_DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            bundle_der=bundle,
            expires_at=not_after,
        )

    def mint_jwt_svid(self, spiffe_id: str, audience: Sequence[str], ttl: float = 300.0) -> str:
        """A JWT-SVID (ES256, ``kid`` header) with ``sub``, ``aud``, ``exp`` and ``iat``."""
        self._check_id(spiffe_id)
        if isinstance(audience, str):
            audience = [audience]
        if not audience or not all(isinstance(a, str) and a for a in audience):
            raise DevAuthorityError(f"audience {list(audience)!r} must hold at least one non-empty string")
        if ttl <= 0:
            raise DevAuthorityError(f"ttl={ttl} must be a positive number of seconds")
        with self._lock:
            signer = self._jwt_keys[-1]
        now = self._now()
        claims = {"sub": spiffe_id, "aud": list(audience), "iat": int(now.timestamp()),
                  "exp": int((now + timedelta(seconds=ttl)).timestamp())}
        return jwt.encode(claims, signer.key, algorithm="ES256", headers={"kid": signer.kid, "typ": "JWT"})

    def validate_jwt_svid(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of a JWT-SVID this authority signed for ``audience``; DevAuthorityError otherwise."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise DevAuthorityError(f"not a JWT: {exc}") from None
        with self._lock:
            keys = {k.kid: k for k in self._jwt_keys}
        if kid not in keys:
            raise DevAuthorityError(f"JWT-SVID signed with unknown key id {kid!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, keys[kid].key.public_key(), algorithms=["ES256"], audience=audience,
                options={"require": ["sub", "aud", "exp"]}, leeway=0)
        except jwt.PyJWTError as exc:
            raise DevAuthorityError(f"JWT-SVID refused: {exc}") from None
        self._check_id(claims["sub"])
        return claims


def _kid(key: ec.EllipticCurvePrivateKey) -> str:
    spki = key.public_key().public_bytes(_DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()[:32]


# --- the Workload API ------------------------------------------------------------------------------


class WorkloadApiServer:
    """The SPIFFE Workload API for one workload identity, over gRPC on a unix socket.

    Runs grpc.aio in its own thread with its own event loop, because py-spiffe's client is
    synchronous: calling it on the loop that runs the server would deadlock. One server serves
    one fixed identity (one per pod in the demo and in tests); it re-issues the SVID at half its
    lifetime, as SPIRE does, and pushes every new SVID to open ``FetchX509SVID`` streams.
    """

    def __init__(self, authority: DevAuthority, socket_path: str, spiffe_id: str, *,
                 svid_ttl: float | None = None) -> None:
        self.authority = authority
        self.socket_path = os.path.abspath(socket_path)
        self.socket_uri: str = "unix://" + self.socket_path
        self._svid_ttl = svid_ttl
        self._lock = threading.Lock()
        self._spiffe_id = authority._check_id(spiffe_id)
        self.current: X509SvidMaterial = authority.mint_x509_svid(spiffe_id, svid_ttl)
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"WorkloadApiServer({self.socket_uri!r}, spiffe_id={self._spiffe_id!r})"

    @property
    def spiffe_id(self) -> str:
        return self._spiffe_id

    @property
    def running(self) -> bool:
        return self._thread is not None

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Serve; returns once the socket accepts connections. Starting a running server is a no-op."""
        if self._thread is not None:
            return
        length = len(self.socket_path.encode())
        if length > 107:
            raise DevAuthorityError(f"socket path {self.socket_path!r} is {length} bytes long; unix sockets "
                                    "allow at most 107: choose a shorter directory")
        try:
            os.makedirs(os.path.dirname(self.socket_path), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise DevAuthorityError(f"cannot create the directory for {self.socket_path!r}: "
                                    f"{exc.strerror or exc}") from None
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)  # a stale socket from a previous run
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._run, args=(ready, failure), daemon=True,
                                  name=f"workload-api:{os.path.basename(self.socket_path)}")
        thread.start()
        if not ready.wait(10.0):
            raise DevAuthorityError(f"the Workload API on {self.socket_uri} did not start within 10 s")
        if failure:
            thread.join(5.0)
            raise DevAuthorityError(f"the Workload API could not listen on {self.socket_uri}: {failure[0]}")
        self._thread = thread
        _log.info("workload api started", extra=fields(socket=self.socket_uri, spiffe_id=self._spiffe_id))

    def stop(self) -> None:
        """End every open stream, stop serving and remove the socket; :meth:`start` works again."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already gone
            loop.call_soon_threadsafe(self._begin_stop)
        thread.join(10.0)
        self._thread = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        _log.info("workload api stopped", extra=fields(socket=self.socket_uri))

    def rotate(self, ttl: float | None = None) -> X509SvidMaterial:
        """Mint a new SVID for the served identity and push it to every open stream."""
        material = self.authority.mint_x509_svid(self._spiffe_id, self._svid_ttl if ttl is None else ttl)
        with self._lock:
            self.current = material
            self._generation += 1
        self._notify_threadsafe()
        return material

    def set_spiffe_id(self, spiffe_id: str) -> None:
        """Serve another identity from now on (tests); pushed to open streams at once."""
        self._spiffe_id = self.authority._check_id(spiffe_id)
        self.rotate()

    def __enter__(self) -> WorkloadApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inside the server's thread ------------------------------------------------------------
    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready, failure))
        except BaseException as exc:  # reported to start(), never lost silently
            failure.append(exc)
            ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        server = grpc.aio.server()
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(_Servicer(self), server)
        try:
            if server.add_insecure_port("unix:" + self.socket_path) == 0:
                raise OSError(f"cannot bind {self.socket_path}")
            await server.start()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            await server.stop(None)
            return
        os.chmod(self.socket_path, 0o600)
        ready.set()
        refresher = asyncio.create_task(self._refresh_forever())
        try:
            await self._stopping.wait()
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            # streams have seen _stopping and end with OK, so clients reconnect instead of failing
            await server.stop(grace=1.0)

    def _begin_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        self._notify()

    def _notify(self) -> None:
        """Wake every waiting stream (runs on the server's loop)."""
        if self._changed is not None:
            old, self._changed = self._changed, asyncio.Event()
            old.set()

    def _notify_threadsafe(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            if loop is _running_loop():
                self._notify()
            else:
                loop.call_soon_threadsafe(self._notify)
        except RuntimeError:  # the loop closed meanwhile: nobody to notify
            pass

    def snapshot(self) -> tuple[int, X509SvidMaterial]:
        with self._lock:
            return self._generation, self.current

    async def wait_change(self, within: float | None = None) -> bool:
        """Wait for the next rotation or stop; False on timeout."""
        assert self._changed is not None
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), within)
        except TimeoutError:
            return False
        return True

    @property
    def stopping(self) -> bool:
        return self._stopping is None or self._stopping.is_set()

    async def _refresh_forever(self) -> None:
        """Re-issue the SVID at half its remaining lifetime, as SPIRE does."""
        while not self.stopping:
            remaining = (self.current.expires_at - _utcnow()).total_seconds()
            if remaining <= 0:  # deliberately expired (tests): leave it be
                await self.wait_change()
                continue
            if not await self.wait_change(max(remaining / 2, _MIN_REFRESH)) and not self.stopping:
                self.rotate()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Servicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """The five Workload API calls, each refusing requests without the security header."""

    def __init__(self, owner: WorkloadApiServer) -> None:
        self._owner = owner

    @staticmethod
    async def _check_header(context: grpc.aio.ServicerContext) -> None:
        metadata = {m.key: m.value for m in (context.invocation_metadata() or ())}
        if metadata.get(WORKLOAD_API_HEADER[0]) != WORKLOAD_API_HEADER[1]:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    async def _updates(self) -> AsyncIterator[X509SvidMaterial]:
        """The current SVID, then each new one, until the server stops."""
        owner, seen = self._owner, -1
        while not owner.stopping:
            generation, material = owner.snapshot()
            if generation != seen:
                seen = generation
                yield material
            else:
                await owner.wait_change()

    async def FetchX509SVID(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        await self._check_header(context)
        async for material in self._updates():
            yield workload_pb2.X509SVIDResponse(svids=[workload_pb2.X509SVID(
                spiffe_id=material.spiffe_id,
                x509_svid=b"".join(material.chain_der),
                x509_svid_key=material.key_der,
                bundle=b"".join(material.bundle_der),
            )])

    async def FetchX509Bundles(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        await self._check_header(context)
        td = self._owner.authority.trust_domain
        async for material in self._updates():
            yield workload_pb2.X509BundlesResponse(bundles={td: b"".join(material.bundle_der)})

    async def FetchJWTBundles(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        await self._check_header(context)
        authority = self._owner.authority
        async for _ in self._updates():
            yield workload_pb2.JWTBundlesResponse(
                bundles={authority.trust_domain: json.dumps(authority.jwt_bundle()).encode()})

    async def FetchJWTSVID(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._check_header(context)
        if not request.audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        served = self._owner.spiffe_id
        if request.spiffe_id and request.spiffe_id != served:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"no identity {request.spiffe_id!r} issued to this workload")
        token = self._owner.authority.mint_jwt_svid(served, list(request.audience))
        return workload_pb2.JWTSVIDResponse(svids=[workload_pb2.JWTSVID(spiffe_id=served, svid=token)])

    async def ValidateJWTSVID(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self._check_header(context)
        if not request.audience or not request.svid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience and svid must be specified")
        try:
            claims = self._owner.authority.validate_jwt_svid(request.svid, request.audience)
        except DevAuthorityError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        struct = struct_pb2.Struct()
        struct.update(claims)
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=claims["sub"], claims=struct)
