"""Certificate profiles: validation, the shipped profiles, and the shared name, key and validity checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki_builders import PROFILES_TOML, TLS_SERVER, make_profile, shipped_profiles
from shared.contract.profiles import (
    MAX_VALIDITY_DAYS,
    Profile,
    dns_problem,
    dns_syntax_problem,
    email_problem,
    ip_problem,
    key_problem,
    key_type_of,
    load_profiles,
    name_allowed,
    names_problems,
    validity_problem,
)

SHIPPED = ("tls-server", "tls-client", "service", "high-assurance", "ocsp-responder")


def _code(reason: object) -> str | None:
    return None if reason is None else reason.code  # type: ignore[attr-defined]


# --- Profile validation -----------------------------------------------------------------------


def test_profile_defaults_are_conservative() -> None:
    profile = Profile(name="p", usage="server", dns_suffixes=["internal"])
    assert not profile.allow_wildcards and not profile.allow_ip_sans and not profile.allow_emails
    assert profile.min_rsa_bits == 2048
    assert profile.default_validity_days <= profile.max_validity_days <= MAX_VALIDITY_DAYS
    assert not profile.require_approval


def test_profile_refuses_default_validity_over_max() -> None:
    with pytest.raises(ValueError, match="default_validity_days"):
        make_profile(default_validity_days=60, max_validity_days=30)


def test_profile_accepts_default_validity_equal_to_max() -> None:
    assert make_profile(default_validity_days=30, max_validity_days=30).default_validity_days == 30


@pytest.mark.parametrize("field", ["max_validity_days", "default_validity_days"])
def test_profile_refuses_validity_over_the_hard_ceiling(field: str) -> None:
    with pytest.raises(ValueError, match=str(MAX_VALIDITY_DAYS)):
        make_profile(**{field: MAX_VALIDITY_DAYS + 1})


def test_profile_refuses_no_names() -> None:
    with pytest.raises(ValueError, match="must allow some names"):
        Profile(name="p", usage="server")


def test_profile_refuses_no_key_types() -> None:
    with pytest.raises(ValueError, match="key type"):
        make_profile(key_types=[])


@pytest.mark.parametrize(
    "suffix",
    ["", ".", "Example.Internal", "example.internal.", "exa mple.internal", "-bad.internal", "bücher.internal"],
    ids=["empty", "dot", "upper_case", "trailing_dot", "space", "leading_hyphen", "u_label"],
)
def test_profile_refuses_bad_suffix(suffix: str) -> None:
    with pytest.raises(ValueError, match="dns_suffixes"):
        make_profile(dns_suffixes=[suffix])


def test_profile_accepts_suffix_with_leading_dot() -> None:
    profile = make_profile(dns_suffixes=[".example.internal"])
    assert name_allowed(profile, "www.example.internal")


@pytest.mark.parametrize("pattern", ["*.Example.internal", "*..internal", "*.internal.", "a_b.*.internal"])
def test_profile_refuses_bad_pattern(pattern: str) -> None:
    with pytest.raises(ValueError, match="dns_patterns"):
        Profile(name="p", usage="server", dns_patterns=[pattern])


def test_profile_refuses_a_pattern_with_a_partial_label_wildcard() -> None:
    with pytest.raises(ValueError, match="dns_patterns"):
        Profile(name="p", usage="server", dns_patterns=["web*.internal"])


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "10.0.0.1/8", "not-a-network", "fd00::/129"])
def test_profile_refuses_bad_cidr(cidr: str) -> None:
    with pytest.raises(ValueError):
        make_profile(allow_ip_sans=True, ip_ranges=[cidr])


def test_profile_refuses_extra_field() -> None:
    with pytest.raises(ValueError, match="extra"):
        make_profile(allow_everything=True)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "TLS"),
        ("name", "-tls"),
        ("usage", "code-signing"),
        ("key_types", ["dsa"]),
        ("min_rsa_bits", 1024),
        ("max_sans", 0),
        ("renew_when_remaining", 1.0),
        ("lint", "none"),
    ],
)
def test_profile_refuses_out_of_range_fields(field: str, value: Any) -> None:
    with pytest.raises(ValueError):
        make_profile(**{field: value})


def test_profile_is_frozen() -> None:
    with pytest.raises(ValueError):
        TLS_SERVER.max_sans = 5  # type: ignore[misc]


def test_digest_is_sha256_hex_and_stable() -> None:
    digest = make_profile().digest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert make_profile().digest() == digest == TLS_SERVER.digest()


def test_digest_survives_a_json_round_trip() -> None:
    assert Profile.model_validate_json(TLS_SERVER.model_dump_json()).digest() == TLS_SERVER.digest()


@pytest.mark.parametrize(
    "change",
    [{"max_sans": 99}, {"description": "other"}, {"dns_suffixes": ["example.internal"]}, {"usage": "both"}],
    ids=["max_sans", "description", "suffixes", "usage"],
)
def test_digest_changes_with_content(change: dict[str, Any]) -> None:
    assert make_profile(**change).digest() != TLS_SERVER.digest()


@pytest.mark.parametrize(
    ("usage", "ekus"), [("server", (True, False)), ("client", (False, True)), ("both", (True, True))]
)
def test_ekus_follow_usage(usage: str, ekus: tuple[bool, bool]) -> None:
    assert make_profile(usage=usage).ekus() == ekus  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("usage", "oids"),
    [
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("both", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("ocsp", [ExtendedKeyUsageOID.OCSP_SIGNING]),
    ],
)
def test_eku_oids_follow_usage(usage: str, oids: list[x509.ObjectIdentifier]) -> None:
    assert make_profile(usage=usage).eku_oids() == oids  # type: ignore[arg-type]


def test_an_ocsp_profile_gives_neither_tls_usage() -> None:
    profile = make_profile(usage="ocsp")
    assert (profile.ekus(), profile.ocsp_responder) == ((False, False), True)
    assert not TLS_SERVER.ocsp_responder


def test_shipped_ocsp_responder_is_short_lived_p256_and_ocsp_only() -> None:
    profile = shipped_profiles()["ocsp-responder"]
    assert profile.eku_oids() == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert (profile.default_validity_days, profile.max_validity_days, profile.max_sans) == (2, 7, 1)
    assert profile.key_types == ["ec-p256"]
    assert name_allowed(profile, "validation.ocsp.internal")
    assert not name_allowed(profile, "web.internal")


def test_template_name_is_allowed_by_its_profile() -> None:
    assert TLS_SERVER.template_name() == "template.example.internal"
    by_pattern = Profile(name="p", usage="server", dns_patterns=["*.db.internal"])
    assert by_pattern.template_name() == "template.db.internal"
    for profile in (TLS_SERVER, by_pattern, *shipped_profiles().values()):
        assert dns_problem(profile, profile.template_name()) is None


# --- load_profiles ----------------------------------------------------------------------------


def test_shipped_profiles_are_the_five() -> None:
    assert [p.name for p in load_profiles(PROFILES_TOML)] == list(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_values_are_sensible(name: str) -> None:
    profile = shipped_profiles()[name]
    assert 1 <= profile.default_validity_days <= profile.max_validity_days <= 397
    assert profile.dns_suffixes == (["ocsp.internal"] if name == "ocsp-responder" else ["internal"])
    assert not profile.allow_wildcards and not profile.allow_emails
    assert 1 <= profile.max_sans <= 100
    assert profile.min_rsa_bits >= 2048
    assert profile.description


def test_shipped_tls_server_is_server_only() -> None:
    profile = shipped_profiles()["tls-server"]
    assert (profile.usage, profile.ekus()) == ("server", (True, False))
    assert not profile.allow_ip_sans
    assert (profile.default_validity_days, profile.max_validity_days, profile.max_sans) == (30, 90, 100)
    assert set(profile.key_types) == {"ec-p256", "ec-p384", "rsa", "ed25519"}


def test_shipped_tls_client_is_client_only_and_short_lived() -> None:
    profile = shipped_profiles()["tls-client"]
    assert (profile.usage, profile.ekus()) == ("client", (False, True))
    assert (profile.default_validity_days, profile.max_validity_days, profile.max_sans) == (7, 30, 10)


def test_shipped_service_allows_private_ips_only() -> None:
    profile = shipped_profiles()["service"]
    assert profile.usage == "both" and profile.allow_ip_sans
    assert ip_problem(profile, "10.1.2.3") is None
    assert ip_problem(profile, "fd00::1") is None
    assert _code(ip_problem(profile, "8.8.8.8")) == "ip_not_allowed"
    assert _code(ip_problem(profile, "2001:db8::1")) == "ip_not_allowed"


def test_shipped_high_assurance_needs_approval_strong_keys_and_full_lint() -> None:
    profile = shipped_profiles()["high-assurance"]
    assert profile.require_approval and not profile.auto_renew
    assert profile.lint == "full"
    assert profile.key_types == ["ec-p384", "rsa"] and profile.min_rsa_bits == 3072
    assert (profile.max_validity_days, profile.max_sans, profile.approval_timeout_hours) == (180, 5, 72)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    return path


def test_load_profiles_refuses_broken_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[profiles.tls-server\nusage = 'server'\n")
    with pytest.raises(ValueError, match="not valid TOML") as info:
        load_profiles(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text", ["", "[other]\nx = 1\n", "profiles = 3\n", "[profiles]\n", "[[profiles]]\nusage = 'server'\n"]
)
def test_load_profiles_refuses_missing_profile_tables(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match=r"no \[profiles\.<name>\] tables"):
        load_profiles(_toml(tmp_path, text))


def test_load_profiles_refuses_a_profile_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"profiles\.web is not a table"):
        load_profiles(_toml(tmp_path, "[profiles]\nweb = 'server'\n"))


@pytest.mark.parametrize(
    "body",
    [
        "usage = 'server'\ndns_suffixes = ['internal']\nmax_validity_days = 400\n",
        "usage = 'server'\ndns_suffixes = ['internal']\ncolour = 'blue'\n",
        "usage = 'server'\n",
        "usage = 'server'\ndns_suffixes = ['Internal']\n",
        "dns_suffixes = ['internal']\n",
    ],
    ids=["validity", "extra_field", "no_names", "bad_suffix", "no_usage"],
)
def test_load_profiles_names_the_bad_profile(tmp_path: Path, body: str) -> None:
    good = "[profiles.good]\nusage = 'client'\ndns_suffixes = ['internal']\n"
    with pytest.raises(ValueError, match="profile 'broken'"):
        load_profiles(_toml(tmp_path, f"{good}\n[profiles.broken]\n{body}"))


def test_load_profiles_refuses_a_bad_profile_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profile 'Web'"):
        load_profiles(_toml(tmp_path, "[profiles.Web]\nusage = 'server'\ndns_suffixes = ['internal']\n"))


def test_load_profiles_refuses_a_name_field_inside_the_table(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profile 'web'"):
        load_profiles(_toml(tmp_path, "[profiles.web]\nname = 'other'\nusage = 'server'\ndns_suffixes = ['x']\n"))


# --- DNS syntax -------------------------------------------------------------------------------

LONGEST = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters


@pytest.mark.parametrize(
    "name",
    [
        "www.example.internal",
        "a.b",
        "internal",
        "a" * 63 + ".example.internal",
        LONGEST,
        "xn--bcher-kva.example.internal",
        "1-2.3.internal",
        "a--b.internal",  # '--' outside positions 3-4
    ],
    ids=["plain", "short", "single_label", "label_63", "name_253", "a_label", "digits_hyphen", "inner_double_hyphen"],
)
def test_dns_syntax_accepts(name: str) -> None:
    assert dns_syntax_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("good.internal\x00.evil.test", "NUL"),
        ("app\t.internal", "control character"),
        ("bell\x07.internal", "control character"),
        ("a b.internal", "space"),
        ("bücher.example.internal", "A-labels"),
        ("www.example.internal.", "ends with a dot"),
        ("WWW.example.internal", "lower case"),
        ("a" * 64 + ".example.internal", "label of 64 characters"),
        (LONGEST + "b", "254 characters"),
        ("-www.example.internal", "invalid label '-www'"),
        ("www-.example.internal", "invalid label 'www-'"),
        ("www..example.internal", "invalid label ''"),
        (".example.internal", "invalid label ''"),
        ("under_score.internal", "invalid label 'under_score'"),
        ("*.example.internal", "invalid label '*'"),
        ("xn--zz.example.internal", "invalid IDNA A-label 'xn--zz'"),
        ("xn--.example.internal", "invalid label 'xn--'"),
        ("xn--ls8h.example.internal", "invalid IDNA A-label"),  # decodes to an emoji, not allowed by IDNA 2008
        ("ab--cd.example.internal", "positions 3-4"),
    ],
    ids=[
        "empty",
        "nul",
        "tab",
        "bel",
        "space",
        "u_label",
        "trailing_dot",
        "upper_case",
        "label_64",
        "name_254",
        "leading_hyphen",
        "trailing_hyphen",
        "empty_label",
        "leading_dot",
        "underscore",
        "wildcard",
        "bad_a_label",
        "empty_a_label",
        "disallowed_a_label",
        "reserved_hyphens",
    ],
)
def test_dns_syntax_refuses(name: str, why: str) -> None:
    problem = dns_syntax_problem(name)
    assert problem is not None
    assert why in problem


# --- names inside a profile -------------------------------------------------------------------

SUFFIX_PROFILE = make_profile(dns_suffixes=["internal"])


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("internal", True),
        ("a.internal", True),
        ("a.b.c.internal", True),
        ("evilinternal", False),
        ("internal.evil", False),
        ("internal.com", False),
        ("a.internalx", False),
    ],
)
def test_suffix_matching(name: str, allowed: bool) -> None:
    assert name_allowed(SUFFIX_PROFILE, name) is allowed


def test_suffix_matching_with_several_suffixes() -> None:
    assert name_allowed(TLS_SERVER, "example.internal")
    assert name_allowed(TLS_SERVER, "a.corp.internal")
    assert not name_allowed(TLS_SERVER, "other.internal")
    assert not name_allowed(TLS_SERVER, "evilexample.internal")


PATTERNS = Profile(name="p", usage="server", dns_patterns=["*.db.internal", "api.internal"])


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("pg1.db.internal", True),
        ("db.internal", False),  # '*' is exactly one label, not none
        ("a.b.db.internal", False),  # nor two
        ("api.internal", True),
        ("x.api.internal", False),  # a pattern is not a suffix
    ],
)
def test_patterns_match_one_label(name: str, allowed: bool) -> None:
    assert name_allowed(PATTERNS, name) is allowed


def test_wildcard_pattern_label_matches_any_one_label() -> None:
    profile = Profile(name="p", usage="server", dns_patterns=["*.*.corp.internal"])
    assert name_allowed(profile, "a.b.corp.internal")
    assert not name_allowed(profile, "b.corp.internal")


@pytest.mark.parametrize(
    ("profile", "name", "code"),
    [
        (TLS_SERVER, "www.example.internal", None),
        (TLS_SERVER, "www.example.com", "name_not_in_profile"),
        (TLS_SERVER, "WWW.example.internal", "name_invalid"),
        (TLS_SERVER, "*.example.internal", "wildcard_not_allowed"),
        (make_profile(allow_wildcards=True), "*.example.internal", None),
        (make_profile(allow_wildcards=True), "*.example.com", "name_not_in_profile"),
        (make_profile(allow_wildcards=True), "*.*.example.internal", "name_invalid"),
        (make_profile(allow_wildcards=True), "a.*.example.internal", "name_invalid"),
        (make_profile(allow_wildcards=True), "*", "name_invalid"),
        (PATTERNS, "*.db.internal", "wildcard_not_allowed"),
        (PATTERNS, "web-*.eu.corp.internal", "name_invalid"),  # name_allowed alone would match it literally
    ],
    ids=[
        "inside",
        "outside",
        "syntax",
        "wildcard_refused",
        "wildcard_allowed",
        "wildcard_outside",
        "double_wildcard",
        "inner_wildcard",
        "bare_star",
        "wildcard_on_pattern",
        "star_in_label",
    ],
)
def test_dns_problem(profile: Profile, name: str, code: str | None) -> None:
    assert _code(dns_problem(profile, name)) == code


def test_dns_problem_says_what_the_profile_allows() -> None:
    reason = dns_problem(TLS_SERVER, "www.example.com")
    assert reason is not None
    assert "*.example.internal" in reason.message and "*.corp.internal" in reason.message


IPS = make_profile(allow_ip_sans=True, ip_ranges=["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("profile", "ip", "code"),
    [
        (TLS_SERVER, "10.0.0.1", "ip_not_allowed"),
        (IPS, "10.0.0.1", None),
        (IPS, "10.255.255.255", None),
        (IPS, "fd12::1", None),
        (IPS, "11.0.0.1", "ip_not_allowed"),
        (IPS, "::ffff:10.0.0.1", "ip_not_allowed"),
        (IPS, "10.0.0.0/8", "name_invalid"),
        (IPS, "not-an-ip", "name_invalid"),
        (make_profile(allow_ip_sans=True), "203.0.113.9", None),  # no ranges: any address
    ],
    ids=["not_allowed", "in_range", "range_end", "ipv6_in_range", "outside", "mapped", "network", "junk", "any"],
)
def test_ip_problem(profile: Profile, ip: str, code: str | None) -> None:
    assert _code(ip_problem(profile, ip)) == code


EMAILS = make_profile(allow_emails=True)


@pytest.mark.parametrize(
    ("profile", "email", "code"),
    [
        (TLS_SERVER, "ops@example.internal", "email_not_allowed"),
        (EMAILS, "ops@example.internal", None),
        (EMAILS, "first.last+tag@corp.internal", None),
        (EMAILS, "ops@example.com", "name_not_in_profile"),
        (EMAILS, "ops.example.internal", "name_invalid"),
        (EMAILS, "@example.internal", "name_invalid"),
        (EMAILS, "a@b@example.internal", "name_invalid"),
        (EMAILS, "o ps@example.internal", "name_invalid"),
        (EMAILS, "öps@example.internal", "name_invalid"),
        (EMAILS, "ops@Example.internal", "name_invalid"),
        (EMAILS, "x" * 65 + "@example.internal", "name_invalid"),
    ],
    ids=["not_allowed", "ok", "dots_plus", "outside", "no_at", "no_local", "two_ats", "space", "utf8", "upper", "long"],
)
def test_email_problem(profile: Profile, email: str, code: str | None) -> None:
    assert _code(email_problem(profile, email)) == code


# --- keys -------------------------------------------------------------------------------------


def test_key_type_of() -> None:
    assert key_type_of(ec.generate_private_key(ec.SECP256R1()).public_key()) == "ec-p256"
    assert key_type_of(ec.generate_private_key(ec.SECP384R1()).public_key()) == "ec-p384"
    assert key_type_of(ec.generate_private_key(ec.SECP521R1()).public_key()) is None
    assert key_type_of(ed25519.Ed25519PrivateKey.generate().public_key()) == "ed25519"
    assert key_type_of(ed448.Ed448PrivateKey.generate().public_key()) is None
    assert key_type_of("not a key") is None


def test_key_problem_refuses_rsa_1024(rsa_1024_key: rsa.RSAPrivateKey) -> None:
    reason = key_problem(TLS_SERVER, rsa_1024_key.public_key())
    assert _code(reason) == "key_weak"
    assert "1024" in reason.message and "2048" in reason.message  # type: ignore[union-attr]


def test_key_problem_accepts_rsa_2048(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    assert key_problem(TLS_SERVER, rsa_2048_key.public_key()) is None


def test_key_problem_refuses_rsa_under_profile_minimum(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    profile = make_profile(min_rsa_bits=3072)
    reason = key_problem(profile, rsa_2048_key.public_key())
    assert _code(reason) == "key_weak"
    assert "3072" in reason.message  # type: ignore[union-attr]


def test_key_problem_refuses_rsa_exponent_3(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    key = rsa.RSAPublicNumbers(3, rsa_2048_key.public_key().public_numbers().n).public_key()
    reason = key_problem(TLS_SERVER, key)
    assert _code(reason) == "key_weak"
    assert "65537" in reason.message  # type: ignore[union-attr]


def test_key_problem_refuses_rsa_over_8192_bits() -> None:
    key = rsa.RSAPublicNumbers(65537, 2**8199 + 1).public_key()  # a modulus is not checked for primality
    assert _code(key_problem(TLS_SERVER, key)) == "key_unsupported"


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["p256", "p384"])
def test_key_problem_accepts_nist_curves(curve: ec.EllipticCurve) -> None:
    assert key_problem(TLS_SERVER, ec.generate_private_key(curve).public_key()) is None


@pytest.mark.parametrize("curve", [ec.SECP256K1(), ec.SECP521R1(), ec.SECP192R1()], ids=lambda c: c.name)
def test_key_problem_refuses_other_curves(curve: ec.EllipticCurve) -> None:
    reason = key_problem(TLS_SERVER, ec.generate_private_key(curve).public_key())
    assert _code(reason) == "key_unsupported"
    assert curve.name in reason.message  # type: ignore[union-attr]


def test_key_problem_accepts_ed25519() -> None:
    assert key_problem(TLS_SERVER, ed25519.Ed25519PrivateKey.generate().public_key()) is None


def test_key_problem_refuses_ed448() -> None:
    reason = key_problem(TLS_SERVER, ed448.Ed448PrivateKey.generate().public_key())
    assert _code(reason) == "key_unsupported"
    assert "Ed448" in reason.message  # type: ignore[union-attr]


def test_key_problem_refuses_a_non_key() -> None:
    assert _code(key_problem(TLS_SERVER, "not a key")) == "key_unsupported"


@pytest.mark.parametrize(
    ("key_types", "key"),
    [
        (["ec-p256"], lambda: ed25519.Ed25519PrivateKey.generate()),
        (["ec-p384", "rsa"], lambda: ec.generate_private_key(ec.SECP256R1())),
        (["ec-p256", "ed25519"], lambda: ec.generate_private_key(ec.SECP384R1())),
    ],
    ids=["ed25519_not_listed", "p256_not_listed", "p384_not_listed"],
)
def test_key_problem_refuses_key_type_not_in_profile(key_types: list[str], key: Any) -> None:
    reason = key_problem(make_profile(key_types=key_types), key().public_key())
    assert _code(reason) == "key_type_not_allowed"
    assert all(kind in reason.message for kind in key_types)  # type: ignore[union-attr]


def test_key_problem_refuses_rsa_not_in_profile(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    assert _code(key_problem(make_profile(key_types=["ec-p256"]), rsa_2048_key.public_key())) == "key_type_not_allowed"


# --- validity and name counts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "code"),
    [(1, None), (30, None), (90, None), (91, "validity_too_long"), (0, "validity_invalid"), (-5, "validity_invalid")],
)
def test_validity_problem(days: int, code: str | None) -> None:
    assert _code(validity_problem(TLS_SERVER, days)) == code


def test_validity_problem_names_the_limit() -> None:
    reason = validity_problem(make_profile(default_validity_days=7, max_validity_days=30), 31)
    assert reason is not None and "1..30" in reason.message


def test_names_problems_accepts_exactly_max_sans() -> None:
    profile = make_profile(max_sans=3, allow_ip_sans=True, allow_emails=True)
    assert names_problems(profile, ["a.example.internal"], ["10.0.0.1"], ["ops@example.internal"]) == []


def test_names_problems_counts_every_kind_against_max_sans() -> None:
    profile = make_profile(max_sans=3, allow_ip_sans=True, allow_emails=True)
    reasons = names_problems(
        profile, ["a.example.internal", "b.example.internal"], ["10.0.0.1"], ["o@example.internal"]
    )
    assert [r.code for r in reasons] == ["too_many_names"]
    assert "4" in reasons[0].message and "3" in reasons[0].message


def test_names_problems_stops_at_too_many_names() -> None:
    names = [f"BAD{i}.example.com" for i in range(101)]
    assert [r.code for r in names_problems(TLS_SERVER, names, [], [])] == ["too_many_names"]


def test_names_problems_needs_a_dns_name() -> None:
    profile = make_profile(allow_ip_sans=True)
    assert [r.code for r in names_problems(profile, [], ["10.0.0.1"], [])] == ["names_missing"]


def test_names_problems_reports_every_name() -> None:
    reasons = names_problems(TLS_SERVER, ["www.example.com", "A.example.internal"], ["10.0.0.1"], ["o@x.internal"])
    assert [r.code for r in reasons] == ["name_not_in_profile", "name_invalid", "ip_not_allowed", "email_not_allowed"]
