"""Signing's composition root: the only place a key store is opened."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from services.signing.cas import CaRegistry
from services.signing.crl import CrlPublisher
from services.signing.handlers import NAME, load_profiles, register
from services.signing.hsm import Pkcs11KeyStore
from services.signing.keystore import CaKeyStore, KeyStore
from services.signing.rebuild import adopting
from services.signing.retire import Retirements
from services.signing.templates import TemplateBook
from shared.base.clock import Clock
from shared.base.settings import SigningSettings
from shared.runtime.service import Runtime, create_service


def open_key_store(settings: SigningSettings) -> CaKeyStore:
    """The configured CA key store: encrypted files (the default) or a PKCS#11 token."""
    if settings.ca_keystore == "pkcs11":
        return Pkcs11KeyStore(
            settings.ca_pkcs11_module,
            settings.pkcs11_pin(),
            token_label=settings.ca_pkcs11_token_label,
            slot=settings.ca_pkcs11_slot,
        )
    return KeyStore(settings.key_dir, settings.passphrase())


def build(settings: SigningSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the signing service."""
    settings = settings or SigningSettings()
    keys = open_key_store(settings)
    cas = CaRegistry(keys, settings)

    async def on_start(rt: Runtime) -> None:
        await cas.bootstrap(rt)
        await rt.publish_pending()
        await load_profiles(rt, cas, book)  # every current profile's templates linted before issuing
        await crls.publish_due()  # a new CA has a CRL before it issues anything
        crls.loop.start()
        retirements.loop.start()
        retirements.loop.wake()  # resume a retirement a crash or an outage left unfinished

    async def on_stop(rt: Runtime) -> None:
        await retirements.loop.stop()
        await crls.loop.stop()

    app, rt = create_service(
        NAME,
        settings,
        Path(__file__).parent / "migrations",
        clock=clock,
        on_start=on_start,
        on_stop=on_stop,
        readiness=cas.readiness,
        adopt=adopting(keys),  # a lost database: its CAs, certificates and CRL numbers from the log
    )
    crls = CrlPublisher(rt, cas)  # the hooks above run after this line, at start-up
    book = TemplateBook(cas)
    retirements = Retirements(rt, cas, crls)
    register(rt, cas=cas, crls=crls, book=book, retirements=retirements)
    return app, rt
