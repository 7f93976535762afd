"""CA keys in a PKCS#11 token (an HSM, or SoftHSM2 in development): generated inside it as sensitive
and non-extractable, used only through it. The only module that talks to a token."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn, Self

import pkcs11
import pkcs11.exceptions as ckr
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed, encode_dss_signature
from cryptography.utils import Buffer
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, Session, Slot, Token
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from services.signing.keystore import KeyDestruction, KeyStoreError
from shared.pki.crypto import KeyType as CaKeyType
from shared.pki.crypto import PrivateKey

_CURVES = {"ec-p256": "secp256r1", "ec-p384": "secp384r1"}
_RSA_BITS = {"rsa-2048": 2048, "rsa-3072": 3072}
_RSA_MECHANISMS = {"sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS}
# The private half: kept on the token, usable after login only, never leaving it in any form.
_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
}
_PUBLIC_TEMPLATE = {Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True}
# Answers after which the session is gone (the HSM restarted, a network HSM reconnected): log in again.
_SESSION_LOST = (
    ckr.SessionHandleInvalid,
    ckr.SessionClosed,
    ckr.UserNotLoggedIn,
    ckr.DeviceRemoved,
    ckr.TokenNotPresent,
    ckr.KeyHandleInvalid,
    ckr.ObjectHandleInvalid,
)

log = logging.getLogger("certbus.signing.hsm")


def _answer(error: Exception) -> str:
    """The token's answer as python-pkcs11 names it (e.g. PinIncorrect for CKR_PIN_INCORRECT)."""
    return type(error).__name__


class Pkcs11KeyStore:
    """CA keys in one token, each a key pair whose CKA_LABEL and CKA_ID are the CA id; one logged-in
    session, one operation at a time (signing signs from worker threads too), opened again once
    if the token lost it."""

    def __init__(self, module: Path, pin: str, *, token_label: str | None = None, slot: int | None = None) -> None:
        if (token_label is None) == (slot is None):
            raise KeyStoreError("name the PKCS#11 token by its label or by its slot id (one of the two)")
        self._where = f"token {token_label!r}" if token_label is not None else f"the token in slot {slot}"
        try:
            lib = pkcs11.lib(str(module))
        except (ckr.PKCS11Error, OSError) as error:
            raise KeyStoreError(f"cannot load the PKCS#11 module {module}: {error}") from None
        self._token = self._find_token(lib.get_slots(token_present=True), module, token_label, slot)
        self._pin = pin
        self._session = self._log_in()
        self._lock = threading.Lock()
        self._cache: dict[str, PrivateKey] = {}
        self._handles: dict[str, Any] = {}  # private key objects of the current session, by CA id

    def __repr__(self) -> str:
        return f"Pkcs11KeyStore({self._where})"

    def _log_in(self) -> Session:
        try:
            return self._token.open(user_pin=self._pin, rw=True)
        except ckr.UserAlreadyLoggedIn:
            # A login is the application's, not the session's: another session of this process is in.
            return self._token.open(rw=True)
        except (ckr.PinIncorrect, ckr.PinInvalid, ckr.PinLenRange, ckr.PinExpired, ckr.PinLocked) as error:
            raise KeyStoreError(f"{self._where} refused the PIN ({_answer(error)})") from None
        except ckr.PKCS11Error as error:
            raise KeyStoreError(f"cannot log in to {self._where} ({_answer(error)})") from None

    def _find_token(self, slots: list[Slot], module: Path, label: str | None, slot: int | None) -> Token:
        for candidate in slots:
            token = candidate.get_token()
            if (label is not None and token.label == label) or (slot is not None and candidate.slot_id == slot):
                return token
        present = ", ".join(f"{s.get_token().label!r} (slot {s.slot_id})" for s in slots) or "none"
        raise KeyStoreError(f"{self._where} is not in PKCS#11 module {module}: tokens present: {present}")

    def close(self) -> None:
        """Log out and close the session (keys loaded from it sign nothing after)."""
        with self._lock:
            self._cache.clear()
            self._handles.clear()
            self._session.close()

    def _find(self, ca_id: str, object_class: ObjectClass) -> list[Any]:
        attrs = {Attribute.CLASS: object_class, Attribute.ID: ca_id.encode(), Attribute.LABEL: ca_id}
        return list(self._session.get_objects(attrs))

    def generate(self, ca_id: str, key_type: CaKeyType) -> PrivateKey:
        """A new key pair for `ca_id` generated inside the token (its private half never leaves it)."""
        with self._lock:
            if self._find(ca_id, ObjectClass.PRIVATE_KEY):
                raise KeyStoreError(f"{self._where} already holds a key for CA {ca_id}")
            common: dict[str, Any] = {
                "id": ca_id.encode(),
                "label": ca_id,
                "store": True,
                "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
                "private_template": _PRIVATE_TEMPLATE,
                "public_template": _PUBLIC_TEMPLATE,
            }
            try:
                if key_type in _CURVES:
                    params = self._session.create_domain_parameters(
                        KeyType.EC,
                        {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[key_type])},
                        local=True,
                    )
                    public, private = params.generate_keypair(**common)
                elif key_type in _RSA_BITS:
                    public, private = self._session.generate_keypair(KeyType.RSA, _RSA_BITS[key_type], **common)
                else:
                    supported = ", ".join([*_CURVES, *_RSA_BITS])
                    raise KeyStoreError(f"the PKCS#11 key store makes {supported} keys, not {key_type}")
            except ckr.PKCS11Error as error:
                raise KeyStoreError(
                    f"{self._where} could not generate a key for CA {ca_id} ({_answer(error)})"
                ) from None
            key = self._key(ca_id, public, private)
            self._cache[ca_id], self._handles[ca_id] = key, private
            return key

    def has(self, ca_id: str) -> bool:
        """Whether the token holds the private key of `ca_id`."""
        with self._lock:
            return bool(self._find(ca_id, ObjectClass.PRIVATE_KEY))

    def load(self, ca_id: str) -> PrivateKey:
        """A handle on the key of `ca_id` in the token (found once, then kept)."""
        if ca_id in self._cache:
            return self._cache[ca_id]
        with self._lock:
            privates, publics = self._find(ca_id, ObjectClass.PRIVATE_KEY), self._find(ca_id, ObjectClass.PUBLIC_KEY)
            if len(privates) != 1 or len(publics) != 1:
                raise KeyStoreError(
                    f"{self._where} holds {len(privates)} private and {len(publics)} public keys for CA {ca_id}: "
                    "expected one of each"
                )
            key = self._cache[ca_id] = self._key(ca_id, publics[0], privates[0])
            self._handles[ca_id] = privates[0]
            return key

    def destroy(self, ca_id: str) -> KeyDestruction:
        """C_DestroyObject on the key pair of `ca_id`; the answer is the token's (CKR_OK when it did)."""
        with self._lock:
            self._cache.pop(ca_id, None)
            self._handles.pop(ca_id, None)
            private = self._find(ca_id, ObjectClass.PRIVATE_KEY)
            objects = private + self._find(ca_id, ObjectClass.PUBLIC_KEY)
            try:
                for obj in objects:
                    obj.destroy()
            except ckr.PKCS11Error as error:
                raise KeyStoreError(f"{self._where} did not destroy the key of CA {ca_id} ({_answer(error)})") from None
            if not private:
                return KeyDestruction(False, f"no private key object for CA {ca_id} in {self._where}")
            return KeyDestruction(True, f"CKR_OK: C_DestroyObject on {len(objects)} objects in {self._where}")

    def retain(self, ca_ids: Iterable[str]) -> None:
        """Forget the handles of every key but those of `ca_ids`."""
        keep = set(ca_ids)
        for ca_id in [c for c in self._cache if c not in keep]:
            del self._cache[ca_id]
            self._handles.pop(ca_id, None)

    def sign(self, ca_id: str, data: bytes, mechanism: Mechanism) -> bytes:
        """The token's signature with the key of `ca_id` (logging in again once if the session is gone)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return bytes(self._private(ca_id).sign(data, mechanism=mechanism))
                except _SESSION_LOST as error:
                    if attempt == 2:
                        raise KeyStoreError(
                            f"{self._where} did not sign with the key of CA {ca_id} ({_answer(error)})"
                        ) from None
                    log.warning("the token lost signing's session: logging in again", extra={"answer": _answer(error)})
                    self._reopen()
                except ckr.PKCS11Error as error:
                    raise KeyStoreError(
                        f"{self._where} did not sign with the key of CA {ca_id} ({_answer(error)})"
                    ) from None
        raise AssertionError("unreachable")

    def _private(self, ca_id: str) -> Any:
        if (handle := self._handles.get(ca_id)) is None:
            found = self._find(ca_id, ObjectClass.PRIVATE_KEY)
            if len(found) != 1:
                raise KeyStoreError(f"{self._where} holds {len(found)} private keys for CA {ca_id}: it signs nothing")
            handle = self._handles[ca_id] = found[0]
        return handle

    def _reopen(self) -> None:
        self._handles.clear()
        with contextlib.suppress(ckr.PKCS11Error):
            self._session.close()
        self._session = self._log_in()

    def _key(self, ca_id: str, public: Any, private: Any) -> PrivateKey:
        signer = _TokenSigner(self, ca_id)
        if private.key_type == KeyType.EC:
            spki = serialization.load_der_public_key(encode_ec_public_key(public))
            assert isinstance(spki, ec.EllipticCurvePublicKey)
            return TokenEcKey(signer, spki)
        if private.key_type == KeyType.RSA:
            numbers = rsa.RSAPublicNumbers(
                int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(public[Attribute.MODULUS], "big"),
            )
            return TokenRsaKey(signer, numbers.public_key())
        raise KeyStoreError(f"the key of CA {ca_id} in {self._where} is of an unsupported type {private.key_type}")


class _TokenSigner:
    """Signs with the key of one CA through its store (which holds the session)."""

    def __init__(self, store: Pkcs11KeyStore, ca_id: str) -> None:
        self._store, self._ca_id = store, ca_id

    def sign(self, data: bytes, mechanism: Mechanism) -> bytes:
        return self._store.sign(self._ca_id, data, mechanism)


def _refuse_export() -> NoReturn:
    raise TypeError("a CA key in a PKCS#11 token is not extractable: it signs, and nothing else")


def _digest(data: bytes, algorithm: hashes.HashAlgorithm | Prehashed) -> bytes:
    if isinstance(algorithm, Prehashed):
        return data
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


class _InTheToken:
    """What a key held in a token cannot do (be written out), and copies that stay the same key."""

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _refuse_export()

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


class TokenEcKey(_InTheToken, ec.EllipticCurvePrivateKey):
    """An EC CA key in a token, as cryptography's builders take it: they call `sign` with the TBS bytes."""

    def __init__(self, signer: _TokenSigner, public: ec.EllipticCurvePublicKey) -> None:
        self._signer, self._public = signer, public

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """ECDSA over `data` (hashed here, CKM_ECDSA in the token), DER-encoded as X.509 wants it."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TypeError(f"a token's EC key signs ECDSA only, not {type(signature_algorithm).__name__}")
        raw = self._signer.sign(_digest(bytes(data), signature_algorithm.algorithm), Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise TypeError("a CA key in a PKCS#11 token signs only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _refuse_export()


class TokenRsaKey(_InTheToken, rsa.RSAPrivateKey):
    """An RSA CA key in a token (PKCS#1 v1.5 signatures, hashed in the token)."""

    def __init__(self, signer: _TokenSigner, public: rsa.RSAPublicKey) -> None:
        self._signer, self._public = signer, public

    def sign(
        self, data: bytes, padding: AsymmetricPadding, algorithm: hashes.HashAlgorithm | Prehashed | NoDigestInfo
    ) -> bytes:
        """PKCS#1 v1.5 over `data` with SHA-256 or SHA-384 (CKM_SHA256_RSA_PKCS / CKM_SHA384_RSA_PKCS)."""
        if padding.name != "EMSA-PKCS1-v1_5" or isinstance(algorithm, Prehashed | NoDigestInfo):
            raise TypeError("a token's RSA key signs PKCS#1 v1.5 over the message only")
        if algorithm.name not in _RSA_MECHANISMS:
            raise TypeError(f"a token's RSA key signs with {', '.join(_RSA_MECHANISMS)}, not {algorithm.name}")
        return self._signer.sign(data, _RSA_MECHANISMS[algorithm.name])

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise TypeError("a CA key in a PKCS#11 token signs only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _refuse_export()
