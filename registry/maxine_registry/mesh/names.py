"""
Kubernetes names for whatever a service or a version is called.

Maxine accepts service names that Kubernetes does not (``Orders_V2.svc``, 128 characters, upper
case), and versions that are not label values (``1.0+build/7``). Mesh resources need names that
the API server takes: DNS-1035 labels for Services (and so for every name derived from one), label
values for selectors. The rule here is one and the same everywhere:

- a text that is already valid is used as it is;
- anything else is lowercased, every run of other characters becomes one ``-``, it is cut to fit,
  and a hash of the *original* text is appended.

The hash is what keeps the mapping one-to-one: ``Orders`` and ``orders`` are two Maxine services,
and they become ``orders-<hash>`` and ``orders``. It depends on nothing but the text, so a name
never changes because another service came or went, and generating twice gives the same names.
"""

from __future__ import annotations

import hashlib
import logging
import re

logger = logging.getLogger(__name__)

MAX_LABEL_LENGTH = 63
MAX_SUBDOMAIN_LENGTH = 253
HASH_LENGTH = 8

_DNS_LABEL_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_NAMESPACE_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_NOT_LABEL_CHARS = re.compile(r"[^a-z0-9]+")
_NOT_LABEL_VALUE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def short_hash(text: str) -> str:
    """A stable short digest of ``text``: the suffix that keeps sanitised names apart."""
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def is_dns_label(text: str, *, max_length: int = MAX_LABEL_LENGTH) -> bool:
    """Is ``text`` a DNS-1035 label (lowercase letters, digits, '-', starting with a letter)?"""
    return len(text) <= max_length and _DNS_LABEL_RE.fullmatch(text) is not None


def is_namespace(text: str) -> bool:
    """Is ``text`` a valid namespace name (a DNS-1123 label)?"""
    return len(text) <= MAX_LABEL_LENGTH and _NAMESPACE_RE.fullmatch(text) is not None


def dns_label(text: str, *, max_length: int = MAX_LABEL_LENGTH) -> str:
    """
    ``text`` as a DNS-1035 label of at most ``max_length`` characters.

    Unchanged when already valid; otherwise sanitised, cut, and suffixed with the hash of ``text``.
    """
    if is_dns_label(text, max_length=max_length):
        return text

    # Keep what can be kept, so that a person still recognises the service in the name.
    base = _NOT_LABEL_CHARS.sub("-", text.lower()).strip("-")
    if not base[:1].isalpha():
        base = ("x-" + base).rstrip("-")
    room = max_length - HASH_LENGTH - 1
    base = base[:room].rstrip("-")
    return f"{base}-{short_hash(text)}"


def join_name(*parts: str, max_length: int = MAX_LABEL_LENGTH) -> str:
    """
    Labels joined with ``-`` into one DNS-1035 label, hashed down to ``max_length`` when too long.

    The parts must already be labels (from ``dns_label``); the joined name keeps its hash of the
    whole when it has to be cut, so two long names that share a start still differ.
    """
    joined = "-".join(parts)
    if len(joined) <= max_length:
        return joined
    room = max_length - HASH_LENGTH - 1
    return f"{joined[:room].rstrip('-')}-{short_hash(joined)}"


def label_value(text: str) -> str:
    """
    ``text`` as a Kubernetes label value (63 characters, alphanumeric at both ends, '-', '_' and '.').

    Label values may hold upper case and dots, so versions such as ``V1.2.3`` stay as they are.
    """
    if text == "" or (len(text) <= MAX_LABEL_LENGTH and _LABEL_VALUE_RE.fullmatch(text)):
        return text
    base = _NOT_LABEL_VALUE_CHARS.sub("-", text)
    room = MAX_LABEL_LENGTH - HASH_LENGTH - 1
    base = base[:room].strip("-_.")
    return f"{base}-{short_hash(text)}" if base else short_hash(text)


# Identities.

_SERVICE_ACCOUNT_SUBJECT_RE = re.compile(r"system:serviceaccount:([^:]+):([^:]+)")


def service_account(caller: str, *, namespace: str) -> tuple[str, str]:
    """
    The Kubernetes service account, as (namespace, name), that stands for a Maxine caller name.

    A caller that is a Kubernetes token subject (``system:serviceaccount:shop:orders``) names its
    own namespace and account. Any other name (a service name, ``alice@example.com``) is taken to be
    an account in ``namespace`` whose name is the caller's, made a valid label as every other name.
    """
    match = _SERVICE_ACCOUNT_SUBJECT_RE.fullmatch(caller)
    if match is not None and is_namespace(match.group(1)):
        account = match.group(2)
        return match.group(1), account if _NAMESPACE_RE.fullmatch(account) and len(account) <= 253 else dns_label(
            account
        )
    return namespace, dns_label(caller)


def spiffe_principal(caller: str, *, namespace: str, trust_domain: str) -> str:
    """The caller's SPIFFE identity as Istio writes principals: ``<trust domain>/ns/<ns>/sa/<account>``."""
    account_namespace, account = service_account(caller, namespace=namespace)
    return f"{trust_domain}/ns/{account_namespace}/sa/{account}"
