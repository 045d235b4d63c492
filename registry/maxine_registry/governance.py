"""
Governance: who may discover whom. ACLs, intentions and the service blacklist, in one place.

Three kinds of rule decide whether a caller may discover a service, checked in this order; the
first refusal ends the check, so a request passes only when every kind lets it through:

1. The blacklist. A blacklisted service is hidden from every caller (403 ``service_blacklisted``)
   and takes no new instances. Instances it already had are kept, leases running as usual, so
   taking the service off the blacklist brings back the ones still alive.
2. The service's ACL, a list the destination keeps of who may call it. A caller on the deny list
   is refused; when the allow list is not empty, only the callers on it pass. ``*`` stands for
   every named caller; an anonymous caller (one that gives no name) is refused by any allow list,
   ``*`` included, and by a deny list holding ``*``.
3. Intentions, modelled on Consul's: rules ``source -> destination: allow|deny`` with ``*`` on
   either side. The most specific rule that matches decides. Like Consul, a named destination
   counts for more than a named source:

   =========  ===========  ==========
   source     destination  precedence
   =========  ===========  ==========
   exact      exact        4
   ``*``      exact        3
   exact      ``*``        2
   ``*``      ``*``        1
   =========  ===========  ==========

   One pair holds one action (setting it again replaces it), so two rules never tie. When no
   rule matches, ``INTENTIONS_DEFAULT`` decides (allow unless configured otherwise). Anonymous
   callers match only the rules whose source is ``*``.

Caller names come from ``identity.caller_name``: the verified subject of a token when auth is on,
otherwise the name the caller declares. Without auth a name is a claim, enough to keep well-meaning
services to their lanes, not to stop a hostile one.

``Governance`` holds the rules, publishes a change event for every write, checks the rules for
every transport through the discovery and registration guards, and saves and restores them as the
``governance`` part of a registry snapshot. Every parse here validates completely before anything
is stored, so a refused request changes nothing.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from maxine_registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from maxine_registry.events import EventBus
from maxine_registry.model import make_node_id, validate_service_name
from maxine_registry.registration import Registration
from maxine_registry.snapshots import Apply

logger = logging.getLogger(__name__)

ANY = "*"
ALLOW: Literal["allow"] = "allow"
DENY: Literal["deny"] = "deny"
Action = Literal["allow", "deny"]
ACTIONS: tuple[Action, ...] = (ALLOW, DENY)

# A caller name may be a service name or a token's subject (``alice@example.com``,
# ``system:serviceaccount:shop:orders``); slashes are left out so that every name fits in a path segment.
MAX_CALLER_NAME_LENGTH = 256
_CALLER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]*")

# Bounds on what the rule tables may hold; replacing an existing entry is always possible.
MAX_ACL_ENTRIES = 1000  # callers in one allow or deny list
MAX_ACLS = 10_000  # services with an ACL
MAX_INTENTIONS = 10_000
MAX_BLACKLISTED = 10_000

ACL_CHANGED = "acl_changed"
INTENTION_CHANGED = "intention_changed"
BLACKLIST_CHANGED = "blacklist_changed"

SNAPSHOT_PART = "governance"


# Validation of names and documents.


def validate_caller_name(value: object, *, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} must be a non-empty string, got {value!r}.")
    if len(value) > MAX_CALLER_NAME_LENGTH:
        raise InvalidInput(f"{field} is longer than {MAX_CALLER_NAME_LENGTH} characters.")
    if value != ANY and not _CALLER_NAME_RE.fullmatch(value):
        raise InvalidInput(
            f"{field} {value!r} is not a caller name: use letters, digits and '.', '_', '@', ':', '+', '-', "
            f"starting with a letter or digit; or '*' for every caller."
        )
    return sys.intern(value)


def _destination(value: object, *, field: str = "destination") -> str:
    return ANY if value == ANY else validate_service_name(value, field=field)


def _callers(value: object, *, field: str) -> tuple[str, ...]:
    """A list of caller names, duplicates dropped, first occurrence first."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a list of caller names, got {value!r}.")
    if len(value) > MAX_ACL_ENTRIES:
        raise InvalidInput(f"{field} holds {len(value)} callers; the limit is {MAX_ACL_ENTRIES}.")
    names = [validate_caller_name(item, field=f"{field}[{index}]") for index, item in enumerate(value)]
    return tuple(dict.fromkeys(names))


def _object(body: object, *, fields: str) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput(f"The body must be a JSON object with {fields}.")
    return body


@dataclass(frozen=True, slots=True)
class Acl:
    """The callers a service lets discover it."""

    service_name: str
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def permits(self, caller: str | None) -> bool:
        # A wildcard deny shuts out everyone; an anonymous caller cannot be let in by name.
        if ANY in self.deny or (caller is not None and caller in self.deny):
            return False
        if not self.allow:
            return True
        return caller is not None and (ANY in self.allow or caller in self.allow)

    def view(self) -> dict[str, Any]:
        return {"serviceName": self.service_name, "allow": list(self.allow), "deny": list(self.deny)}


def parse_acl(body: object) -> Acl:
    document = _object(body, fields="serviceName, allow and deny")
    return Acl(
        service_name=validate_service_name(document.get("serviceName")),
        allow=_callers(document.get("allow"), field="allow"),
        deny=_callers(document.get("deny"), field="deny"),
    )


@dataclass(frozen=True, slots=True)
class Intention:
    """One rule: may ``source`` discover ``destination``. Either side may be ``*``."""

    source: str
    destination: str
    action: Action

    @property
    def precedence(self) -> int:
        return intention_precedence(source=self.source, destination=self.destination)

    def view(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "action": self.action,
            "precedence": self.precedence,
        }


def intention_precedence(*, source: str, destination: str) -> int:
    """Consul's order: a named destination outranks a named source."""
    return 1 + (2 if destination != ANY else 0) + (1 if source != ANY else 0)


def parse_intention_pair(*, source: object, destination: object) -> tuple[str, str]:
    return validate_caller_name(source, field="source"), _destination(destination)


def parse_intention(body: object) -> Intention:
    document = _object(body, fields="source, destination and action")
    source, destination = parse_intention_pair(source=document.get("source"), destination=document.get("destination"))
    action = document.get("action")
    if action not in ACTIONS:
        raise InvalidInput(f"action must be 'allow' or 'deny', got {action!r}.")
    return Intention(source=source, destination=destination, action=ALLOW if action == ALLOW else DENY)


def parse_service_name(body: object, query: Mapping[str, str]) -> str:
    """The ``serviceName`` of a blacklist change: in the JSON body, or the query for bodiless DELETEs."""
    if isinstance(body, dict):
        return validate_service_name(body.get("serviceName"))
    if body is not None:
        raise InvalidInput("The body must be a JSON object with serviceName.")
    return validate_service_name(query.get("serviceName"))


@dataclass(frozen=True, slots=True)
class Decision:
    """What the intentions say about one caller and one destination, and why."""

    source: str | None
    destination: str
    action: Action
    intention: Intention | None  # None when no rule matched and the default decided

    @property
    def allowed(self) -> bool:
        return self.action == ALLOW

    def view(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "action": self.action,
            "allowed": self.allowed,
            "intention": self.intention.view() if self.intention is not None else None,
            "reason": "intention" if self.intention is not None else "default",
        }


@dataclass(frozen=True, slots=True)
class GovernanceState:
    """Everything governance holds, as a snapshot part exports and restores it."""

    acls: dict[str, Acl]
    intentions: dict[tuple[str, str], Intention]
    blacklist: frozenset[str]


def _parse_state(data: object) -> GovernanceState:
    if not isinstance(data, dict):
        raise InvalidInput(
            f"The governance snapshot must be an object with acls, intentions and blacklist, got {data!r}."
        )
    acls_data, intentions_data, blacklist_data = (data.get(key, []) for key in ("acls", "intentions", "blacklist"))
    for name, value, limit in (
        ("acls", acls_data, MAX_ACLS),
        ("intentions", intentions_data, MAX_INTENTIONS),
        ("blacklist", blacklist_data, MAX_BLACKLISTED),
    ):
        if not isinstance(value, list):
            raise InvalidInput(f"The governance snapshot's {name} must be a list, got {value!r}.")
        if len(value) > limit:
            raise InvalidInput(f"The governance snapshot holds {len(value)} {name}; the limit is {limit}.")

    acls = {acl.service_name: acl for acl in map(parse_acl, acls_data)}
    intentions = {(rule.source, rule.destination): rule for rule in map(parse_intention, intentions_data)}
    blacklist = frozenset(validate_service_name(name) for name in blacklist_data)
    return GovernanceState(acls=acls, intentions=intentions, blacklist=blacklist)


class Governance:
    """The rule tables, their checks, and the events their changes publish."""

    def __init__(self, *, events: EventBus, intentions_default: Action = ALLOW) -> None:
        self.events = events
        self.intentions_default: Action = intentions_default
        self._acls: dict[str, Acl] = {}
        self._intentions: dict[tuple[str, str], Intention] = {}
        self._blacklist: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"Governance(acls={len(self._acls)}, intentions={len(self._intentions)}, "
            f"blacklisted={len(self._blacklist)}, intentions_default={self.intentions_default!r})"
        )

    # ACLs.

    def set_acl(self, acl: Acl) -> Acl:
        if acl.service_name not in self._acls and len(self._acls) >= MAX_ACLS:
            raise Conflict(f"ACLs exist for {MAX_ACLS} services, the limit; delete one first.", code="limit_reached")
        self._acls[acl.service_name] = acl
        logger.info("ACL of %r set: allow=%s deny=%s.", acl.service_name, list(acl.allow), list(acl.deny))
        self.events.publish(ACL_CHANGED, {"change": "set", **acl.view()})
        return acl

    def get_acl(self, service_name: str) -> Acl:
        acl = self._acls.get(service_name)
        if acl is None:
            raise NotFound(f"Service {service_name!r} has no ACL.", code="acl_not_found")
        return acl

    def acls(self) -> list[Acl]:
        return [self._acls[name] for name in sorted(self._acls)]

    def delete_acl(self, service_name: str) -> Acl:
        acl = self.get_acl(service_name)
        del self._acls[service_name]
        logger.info("ACL of %r deleted.", service_name)
        self.events.publish(ACL_CHANGED, {"change": "deleted", "serviceName": service_name})
        return acl

    # Intentions.

    def set_intention(self, intention: Intention) -> Intention:
        key = (intention.source, intention.destination)
        if key not in self._intentions and len(self._intentions) >= MAX_INTENTIONS:
            raise Conflict(f"{MAX_INTENTIONS} intentions exist, the limit; delete one first.", code="limit_reached")
        self._intentions[key] = intention
        logger.info("Intention %s -> %s set to %s.", intention.source, intention.destination, intention.action)
        self.events.publish(INTENTION_CHANGED, {"change": "set", **intention.view()})
        return intention

    def get_intention(self, *, source: str, destination: str) -> Intention:
        intention = self._intentions.get((source, destination))
        if intention is None:
            raise NotFound(f"No intention is set for {source} -> {destination}.", code="intention_not_found")
        return intention

    def intentions(self) -> list[Intention]:
        """Every intention, the ones that win first, then by name."""
        return sorted(self._intentions.values(), key=lambda rule: (-rule.precedence, rule.source, rule.destination))

    def delete_intention(self, *, source: str, destination: str) -> Intention:
        intention = self.get_intention(source=source, destination=destination)
        del self._intentions[(source, destination)]
        logger.info("Intention %s -> %s deleted.", source, destination)
        self.events.publish(INTENTION_CHANGED, {"change": "deleted", "source": source, "destination": destination})
        return intention

    def decide(self, *, source: str | None, destination: str) -> Decision:
        """The intention that governs ``source -> destination``: most specific first, else the default."""
        # Four dictionary lookups in precedence order; a wildcard caller name counts as no name.
        keys: tuple[tuple[str, str], ...]
        if source is not None and source != ANY:
            keys = ((source, destination), (ANY, destination), (source, ANY), (ANY, ANY))
        else:
            keys = ((ANY, destination), (ANY, ANY))
        for key in keys:
            intention = self._intentions.get(key)
            if intention is not None:
                return Decision(source=source, destination=destination, action=intention.action, intention=intention)
        return Decision(source=source, destination=destination, action=self.intentions_default, intention=None)

    # The blacklist.

    def blacklist_add(self, service_name: str) -> bool:
        """Blacklist a service; True when it was not blacklisted before."""
        if service_name in self._blacklist:
            return False
        if len(self._blacklist) >= MAX_BLACKLISTED:
            raise Conflict(f"{MAX_BLACKLISTED} services are blacklisted, the limit.", code="limit_reached")
        self._blacklist.add(service_name)
        logger.info("Service %r is blacklisted: hidden from discovery, new instances refused.", service_name)
        self.events.publish(BLACKLIST_CHANGED, {"change": "added", "serviceName": service_name})
        return True

    def blacklist_remove(self, service_name: str) -> bool:
        """Take a service off the blacklist; True when it was on it."""
        if service_name not in self._blacklist:
            return False
        self._blacklist.discard(service_name)
        logger.info("Service %r is off the blacklist; its live instances are discoverable again.", service_name)
        self.events.publish(BLACKLIST_CHANGED, {"change": "removed", "serviceName": service_name})
        return True

    def is_blacklisted(self, service_name: str) -> bool:
        return service_name in self._blacklist

    def blacklist(self) -> list[str]:
        return sorted(self._blacklist)

    # Guards, as ``Operations`` calls them for every transport.

    def guard_discovery(self, service_name: str, caller: str | None, client_ip: str | None) -> None:
        """Raise ``Forbidden`` unless ``caller`` may discover ``service_name``; the order is the module's."""
        if service_name in self._blacklist:
            raise Forbidden(f"Service {service_name!r} is blacklisted.", code="service_blacklisted")
        if caller == ANY:
            caller = None

        acl = self._acls.get(service_name)
        if acl is not None and not acl.permits(caller):
            logger.debug("ACL of %r refused caller=%s client_ip=%s.", service_name, caller, client_ip)
            raise Forbidden(
                f"{_who(caller)} may not discover {service_name!r}: its ACL refuses it.", code="access_denied"
            )

        # Skip the lookups when no intention exists and the default lets everyone in.
        if not self._intentions and self.intentions_default == ALLOW:
            return
        decision = self.decide(source=caller, destination=service_name)
        if not decision.allowed:
            because = (
                f"the intention {decision.intention.source} -> {decision.intention.destination} denies it"
                if decision.intention is not None
                else "no intention allows it and the default is deny"
            )
            logger.debug("Intentions refused caller=%s service=%s client_ip=%s.", caller, service_name, client_ip)
            raise Forbidden(f"{_who(caller)} may not discover {service_name!r}: {because}.", code="access_denied")

    def registration_guard(self, *, is_registered: Callable[[str], bool]) -> Callable[[Registration], None]:
        """
        The guard that refuses new instances of blacklisted services.

        An instance already registered may still re-register (a refresh): it is hidden anyway,
        and keeping its lease lets un-blacklisting bring it back as it was.
        """

        def guard(registration: Registration) -> None:
            if registration.service_name not in self._blacklist:
                return
            if not is_registered(make_node_id(registration.service_name, registration.host, registration.port)):
                raise Forbidden(
                    f"Service {registration.service_name!r} is blacklisted; it takes no new instances.",
                    code="service_blacklisted",
                )

        return guard

    # The snapshot part.

    def export(self) -> dict[str, Any]:
        return {
            "acls": [acl.view() for acl in self.acls()],
            "intentions": [
                {"source": rule.source, "destination": rule.destination, "action": rule.action}
                for rule in self.intentions()
            ],
            "blacklist": self.blacklist(),
        }

    def prepare(self, data: Any) -> Apply:
        state = _parse_state(data)

        def apply() -> None:
            self._acls = dict(state.acls)
            self._intentions = dict(state.intentions)
            self._blacklist = set(state.blacklist)
            logger.info(
                "Governance restored: %d ACLs, %d intentions, %d blacklisted services.",
                len(self._acls),
                len(self._intentions),
                len(self._blacklist),
            )
            for event in (ACL_CHANGED, INTENTION_CHANGED, BLACKLIST_CHANGED):
                self.events.publish(event, {"change": "restored"})

        return apply


def _who(caller: str | None) -> str:
    """The caller as a refusal names it."""
    return f"Caller {caller!r}" if caller is not None else "An anonymous caller"
