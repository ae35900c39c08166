"""Scoring profiles: the registry of the tenants' profiles, loaded from a TOML file. Pure
but for reading that file.

One profile and its validation: worker/rules/profile.py.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from worker.errors import ProfileError
from worker.rules.churn import Fit
from worker.rules.profile import BUILTIN_DEFAULT, Profile
from worker.rules.profile import DEFAULT_TENANT as DEFAULT_TENANT  # imported from here too
from worker.rules.profile_specs import first_error
from worker.rules.quantiles import Cuts

TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


class Profiles:
    """Profile lookup by tenant; tenants without a profile use `default`."""

    def __init__(self, profiles: Mapping[str, Profile]) -> None:
        self.configured = dict(profiles)  # as loaded: quantile profiles without thresholds
        self.configured.setdefault(DEFAULT_TENANT, BUILTIN_DEFAULT)
        self.cuts: dict[str, Cuts | None] = dict.fromkeys(self.quantile_names())
        self.fits: dict[str, Fit | None] = dict.fromkeys(self.churn_names())
        # What scoring uses: quantile profiles replaced by the thresholds of their cuts.
        self._profiles = {name: p.scored_by(None) for name, p in self.configured.items()}
        self.default = self._profiles[DEFAULT_TENANT]

    def for_tenant(self, tenant: str) -> Profile:
        """The profile the tenant's customers are scored with (thresholds mode always)."""
        return self._profiles.get(tenant, self.default)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def versions(self) -> dict[str, str]:
        """Each profile's version (name -> version): what the marking pass checks against."""
        return {name: self.for_tenant(name).version for name in self.names()}

    def quantile_names(self) -> list[str]:
        """The profiles with mode = "quantiles"."""
        return sorted(n for n, p in self.configured.items() if p.mode == "quantiles")

    def churn_names(self) -> list[str]:
        """The profiles with a churn model."""
        return sorted(n for n, p in self.configured.items() if p.churn_model is not None)

    def use_cuts(self, name: str, cuts: Cuts | None) -> Profile:
        """Score quantile profile `name` with these cut points from now on; returns the
        profile now used."""
        profile = self.configured[name]
        if profile.mode != "quantiles":
            raise ValueError(f"profile {name!r} is not in quantiles mode")
        self.cuts[name] = cuts
        return self._rebuild(name)

    def use_fit(self, name: str, fit: Fit | None) -> Profile:
        """Score P(alive) (and the expected value, with a value model) of profile `name`
        with this fit from now on; returns the profile now used."""
        if self.configured[name].churn_model is None:
            raise ValueError(f"profile {name!r} has no churn model")
        self.fits[name] = fit
        return self._rebuild(name)

    def _rebuild(self, name: str) -> Profile:
        profile = self.configured[name]
        scored = profile.scored_by(self.cuts.get(name)) if profile.mode == "quantiles" else profile
        self._profiles[name] = scored = scored.with_fit(self.fits.get(name))
        if name == DEFAULT_TENANT:
            self.default = scored
        return scored

    @classmethod
    def builtin(cls) -> Profiles:
        return cls({})

    @classmethod
    def from_toml(cls, text: str, source: str = "<profiles>") -> Profiles:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{source}: not valid TOML: {exc}") from None
        table = doc.get("profiles")
        extra = set(doc) - {"profiles"}
        if extra:
            raise ProfileError(f"{source}: unknown top-level key(s) {sorted(extra)}")
        if not isinstance(table, dict) or not table:
            raise ProfileError(f"{source}: expected at least one [profiles.NAME] table")
        profiles: dict[str, Profile] = {}
        for name, body in table.items():
            if not TENANT_NAME.fullmatch(name):
                raise ProfileError(
                    f"{source}: profile name {name!r} is not a tenant name "
                    "(1-100 of A-Z a-z 0-9 . _ -)"
                )
            if not isinstance(body, dict):
                raise ProfileError(f"{source}: profiles.{name} must be a table")
            try:
                profiles[name] = Profile.model_validate({**body, "name": name})
            except ValidationError as exc:
                raise ProfileError(f"{source}: profile '{name}': {first_error(exc)}") from None
        return cls(profiles)

    @classmethod
    def load(cls, path: str | Path | None) -> Profiles:
        if path is None:
            return cls.builtin()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProfileError(f"cannot read profiles file {path}: {exc.strerror}") from None
        return cls.from_toml(text, str(path))
