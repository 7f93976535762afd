"""Certificate profiles: what a certificate of each kind may contain, and the checks that enforce it.

A profile is applied by an operator (`certbus profile apply deploy/profiles.toml`), travels on the
log as a `ProfileApplied` event and is identified by the SHA-256 of its canonical JSON, so that
enrollment and signing agree on exactly which version they judged a request by. The checks here
are pure and shared: enrollment uses them to decide, signing repeats them before it signs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import idna
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.contract.reasons import Reason

Usage = Literal["server", "client", "both", "ocsp"]
ProfileKeyType = Literal["ec-p256", "ec-p384", "rsa", "ed25519"]
PROFILE_KEY_TYPES: tuple[ProfileKeyType, ...] = ("ec-p256", "ec-p384", "rsa", "ed25519")
MAX_VALIDITY_DAYS = 397  # the hard ceiling, whatever a profile says
MAX_RSA_BITS = 8192
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Fields added after profiles were first applied (see Profile.digest), in the order they came.
_ADDED_LATER = ("provisioners", "approvals_required")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")


class Profile(BaseModel):
    """One certificate profile (see deploy/profiles.toml for the shipped ones)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME)
    description: str = Field(default="", max_length=1024)
    usage: Usage
    dns_suffixes: list[Annotated[str, StringConstraints(max_length=253)]] = Field(default=[], max_length=256)
    dns_patterns: list[Annotated[str, StringConstraints(max_length=253)]] = Field(default=[], max_length=256)
    allow_wildcards: bool = False
    allow_ip_sans: bool = False
    ip_ranges: list[Annotated[str, StringConstraints(max_length=64)]] = Field(default=[], max_length=256)
    allow_emails: bool = False
    key_types: list[ProfileKeyType] = Field(default=["ec-p256", "ec-p384", "rsa", "ed25519"], max_length=8)
    min_rsa_bits: int = Field(default=2048, ge=2048, le=MAX_RSA_BITS)
    default_validity_days: int = Field(default=30, ge=1, le=MAX_VALIDITY_DAYS)
    max_validity_days: int = Field(default=90, ge=1, le=MAX_VALIDITY_DAYS)
    max_sans: int = Field(default=100, ge=1, le=1000)
    require_approval: bool = False
    approval_timeout_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    auto_renew: bool = True
    renew_when_remaining: float = Field(default=1 / 3, gt=0, lt=1)
    lint: Literal["template", "full"] = "template"
    # Which provisioners' tokens may enroll under this profile (None: any provisioner whose own
    # scope allows it). The OCSP responder profile names validation's provisioner only.
    provisioners: list[Annotated[str, StringConstraints(max_length=128)]] | None = Field(default=None, max_length=256)
    # How many distinct operators must approve a request (with require_approval): the two-person rule.
    approvals_required: int = Field(default=1, ge=1, le=16)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.default_validity_days > self.max_validity_days:
            raise ValueError(
                f"default_validity_days ({self.default_validity_days}) exceeds max_validity_days "
                f"({self.max_validity_days})"
            )
        if not self.dns_suffixes and not self.dns_patterns:
            raise ValueError("a profile must allow some names: give dns_suffixes or dns_patterns")
        if not self.key_types:
            raise ValueError("a profile must allow at least one key type")
        for suffix in self.dns_suffixes:
            problem = dns_syntax_problem(suffix.lstrip("."))
            if problem is not None:
                raise ValueError(f"dns_suffixes: {problem}")
        for pattern in self.dns_patterns:
            labels = pattern.split(".")
            if any("*" in label and label != "*" for label in labels) or (
                dns_syntax_problem(".".join("x" if label == "*" else label for label in labels)) is not None
            ):
                raise ValueError(
                    f"dns_patterns: {pattern!r} is not a DNS name pattern ('*' stands for one whole label)"
                )
        for cidr in self.ip_ranges:
            ipaddress.ip_network(cidr)  # raises ValueError with the reason
        return self

    def digest(self) -> str:
        """SHA-256 of the canonical JSON: the identity of this exact version of the profile. Fields
        added to the schema later are left out while they keep their defaults, so that a profile
        applied before they existed keeps the digest its events carry."""
        later = {name for name in _ADDED_LATER if getattr(self, name) == type(self).model_fields[name].default}
        return hashlib.sha256(self.model_dump_json(exclude=later).encode()).hexdigest()

    def ekus(self) -> tuple[bool, bool]:
        """(serverAuth, clientAuth)."""
        return self.usage in ("server", "both"), self.usage in ("client", "both")

    def eku_oids(self) -> list[x509.ObjectIdentifier]:
        """The extended key usages its certificates carry, in order: serverAuth and/or clientAuth, or,
        for a delegated OCSP responder (usage "ocsp"), id-kp-OCSPSigning alone."""
        if self.usage == "ocsp":
            return [ExtendedKeyUsageOID.OCSP_SIGNING]
        server, client = self.ekus()
        return [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client

    @property
    def ocsp_responder(self) -> bool:
        """Whether its certificates are delegated OCSP responders (id-kp-OCSPSigning with
        id-pkix-ocsp-nocheck: relying parties do not check the responder's own status)."""
        return self.usage == "ocsp"

    def template_name(self) -> str:
        """A DNS name this profile allows, used in its lint template (a wildcard if it allows them,
        so that the linted template covers the harder case)."""
        first = "*" if self.allow_wildcards else "template"
        if self.dns_suffixes:
            return f"{first}." + self.dns_suffixes[0].lstrip(".")
        return self.dns_patterns[0].replace("*", "template")


def load_profiles(path: Path) -> list[Profile]:
    """Every profile in a TOML file (`[profiles.<name>]` tables); raises ValueError saying what is wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    tables = data.get("profiles")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{path}: no [profiles.<name>] tables")
    profiles = []
    for name, body in tables.items():
        if not isinstance(body, dict):
            raise ValueError(f"{path}: profiles.{name} is not a table")
        if "name" in body:
            raise ValueError(f"{path}: profile {name!r}: the name is the table's, do not repeat it as a field")
        try:
            profiles.append(Profile(name=name, **body))
        except ValueError as exc:
            raise ValueError(f"{path}: profile {name!r}: {exc}") from exc
    return profiles


# --- names ------------------------------------------------------------------------------------


def dns_syntax_problem(name: str) -> str | None:
    """Why `name` is not a syntactically acceptable DNS name (wildcards aside), or None."""
    if not name:
        return "an empty DNS name"
    bad = next((c for c in name if ord(c) < 0x21 or ord(c) > 0x7E), None)
    if bad is not None:
        kind = "a NUL" if bad == "\x00" else "a control character" if ord(bad) < 0x20 else "a non-ASCII character"
        if ord(bad) > 0x7E:
            return f"DNS name {name!r} has {kind}: give internationalised names as IDNA A-labels (xn--...)"
        return f"DNS name {name!r} has {kind} or a space"
    if name.endswith("."):
        return f"DNS name {name!r} ends with a dot: give it without the trailing dot"
    if len(name) > 253:
        return f"DNS name {name[:40]!r}... is {len(name)} characters long; at most 253"
    if name != name.lower():
        return f"DNS name {name!r} must be lower case"
    for label in name.split("."):
        if len(label) > 63:
            return f"DNS name {name[:60]!r}... has a label of {len(label)} characters; at most 63"
        if not _LABEL.match(label):
            return f"DNS name {name!r} has an invalid label {label!r} (letters, digits and inner hyphens only)"
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                return f"DNS name {name!r} has an invalid IDNA A-label {label!r}: {exc}"
        elif label[2:4] == "--":
            return f"DNS name {name!r} has a label {label!r} with '--' in positions 3-4 that is not an A-label"
    return None


def _under(name: str, suffix: str) -> bool:
    suffix = suffix.lstrip(".")
    return name == suffix or name.endswith("." + suffix)


def _matches(name: str, pattern: str) -> bool:
    labels, wanted = name.split("."), pattern.split(".")
    return len(labels) == len(wanted) and all(w == "*" or w == label for label, w in zip(labels, wanted, strict=True))


def name_allowed(profile: Profile, name: str) -> bool:
    """Whether `name` (already syntax-checked; a wildcard's base is checked) is inside the profile."""
    base = name[2:] if name.startswith("*.") else name
    return any(_under(base, s) for s in profile.dns_suffixes) or any(_matches(name, p) for p in profile.dns_patterns)


def dns_problem(profile: Profile, name: str) -> Reason | None:
    """Why the profile does not allow DNS name `name`, or None."""
    wildcard = name.startswith("*.")
    problem = dns_syntax_problem(name[2:] if wildcard else name)
    if problem is not None:
        return Reason(code="name_invalid", message=problem)
    if wildcard and not profile.allow_wildcards:
        return Reason(
            code="wildcard_not_allowed", message=f"wildcard {name!r} is not allowed by profile {profile.name!r}"
        )
    if not name_allowed(profile, name):
        allowed = ", ".join([*(f"*.{s.lstrip('.')}" for s in profile.dns_suffixes), *profile.dns_patterns])
        return Reason(
            code="name_not_in_profile",
            message=f"DNS name {name!r} is outside profile {profile.name!r}, which allows {allowed}",
        )
    return None


def ip_problem(profile: Profile, text: str) -> Reason | None:
    """Why the profile does not allow IP address `text`, or None."""
    if not profile.allow_ip_sans:
        return Reason(code="ip_not_allowed", message=f"IP address {text} is not allowed by profile {profile.name!r}")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return Reason(code="name_invalid", message=f"{text!r} is not an IP address")
    if profile.ip_ranges and not any(ip in ipaddress.ip_network(r) for r in profile.ip_ranges):
        return Reason(
            code="ip_not_allowed",
            message=f"IP address {ip} is outside profile {profile.name!r}'s ranges {', '.join(profile.ip_ranges)}",
        )
    return None


def email_problem(profile: Profile, email: str) -> Reason | None:
    """Why the profile does not allow email address `email`, or None."""
    if not profile.allow_emails:
        return Reason(code="email_not_allowed", message=f"email {email!r} is not allowed by profile {profile.name!r}")
    local, at, domain = email.rpartition("@")
    if not at or not _EMAIL_LOCAL.match(local) or dns_syntax_problem(domain) is not None:
        return Reason(code="name_invalid", message=f"{email!r} is not an ASCII email address (local@domain)")
    if not name_allowed(profile, domain):
        return Reason(code="name_not_in_profile", message=f"email domain of {email!r} is outside {profile.name!r}")
    return None


# --- keys and validity ------------------------------------------------------------------------


def key_type_of(public_key: object) -> ProfileKeyType | None:
    """The profile key type of a public key, or None for a key no profile can allow."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}.get(public_key.curve.name)  # type: ignore[return-value]
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    return None


def key_problem(profile: Profile, public_key: object) -> Reason | None:
    """Why the profile does not allow this public key, or None."""
    if isinstance(public_key, ec.EllipticCurvePublicKey) and key_type_of(public_key) is None:
        return Reason(
            code="key_unsupported",
            message=f"curve {public_key.curve.name} is not supported: use P-256 or P-384",
        )
    kind = key_type_of(public_key)
    if kind is None:
        return Reason(
            code="key_unsupported",
            message=f"{type(public_key).__name__} keys are not supported: use EC P-256/P-384, RSA or Ed25519",
        )
    if kind not in profile.key_types:
        return Reason(
            code="key_type_not_allowed",
            message=f"{kind} keys are not allowed by profile {profile.name!r}: use {', '.join(profile.key_types)}",
        )
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < profile.min_rsa_bits:
            return Reason(
                code="key_weak",
                message=f"RSA key of {public_key.key_size} bits is too weak: profile {profile.name!r} needs "
                f"at least {profile.min_rsa_bits}",
            )
        if public_key.key_size > MAX_RSA_BITS:
            return Reason(code="key_unsupported", message=f"RSA keys over {MAX_RSA_BITS} bits are not supported")
        if public_key.public_numbers().e != 65537:
            return Reason(code="key_weak", message="RSA public exponent must be 65537")
    return None


def validity_problem(profile: Profile, days: int) -> Reason | None:
    """Why `days` of validity is not allowed by the profile, or None."""
    if days < 1 or days > profile.max_validity_days:
        return Reason(
            code="validity_too_long" if days > 0 else "validity_invalid",
            message=f"validity of {days} days is outside 1..{profile.max_validity_days} for profile {profile.name!r}",
        )
    return None


def names_problems(profile: Profile, dns: list[str], ips: list[str], emails: list[str]) -> list[Reason]:
    """Every reason the profile does not allow this set of subject alternative names."""
    reasons: list[Reason] = []
    total = len(dns) + len(ips) + len(emails)
    if total > profile.max_sans:
        return [
            Reason(
                code="too_many_names",
                message=f"{total} subject alternative names asked; profile {profile.name!r} allows {profile.max_sans}",
            )
        ]
    if not dns:
        reasons.append(Reason(code="names_missing", message="no DNS name in the subjectAltName: give at least one"))
    for name in dns:
        if (dns_reason := dns_problem(profile, name)) is not None:
            reasons.append(dns_reason)
    for ip in ips:
        if (ip_reason := ip_problem(profile, ip)) is not None:
            reasons.append(ip_reason)
    for email in emails:
        if (email_reason := email_problem(profile, email)) is not None:
            reasons.append(email_reason)
    return reasons


def requested_extension_problems(profile: Profile, extensions: x509.Extensions) -> list[Reason]:
    """Reasons against extensions a CSR asks for beyond what the profile gives (none is copied anyway)."""
    allowed = set(profile.eku_oids())
    reasons = []
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            continue
        if isinstance(value, x509.BasicConstraints) and not value.ca:
            continue
        if isinstance(value, x509.KeyUsage) and not (value.key_cert_sign or value.crl_sign):
            continue
        if isinstance(value, x509.ExtendedKeyUsage):
            extra = [oid.dotted_string for oid in value if oid not in allowed]
            if not extra:
                continue
            reasons.append(
                Reason(
                    code="extension_not_allowed",
                    message=f"the CSR asks for extended key usages {', '.join(extra)} that profile "
                    f"{profile.name!r} ({profile.usage}) does not give",
                )
            )
            continue
        if isinstance(value, x509.SubjectKeyIdentifier):
            continue
        if isinstance(value, x509.OCSPNoCheck) and profile.ocsp_responder:
            continue
        name = getattr(ext.oid, "_name", None) or ext.oid.dotted_string
        reasons.append(
            Reason(
                code="extension_not_allowed",
                message=f"the CSR asks for extension {name} ({ext.oid.dotted_string}) that profile "
                f"{profile.name!r} does not allow",
            )
        )
    return reasons
