"""Content moderation (docs/moderation.md): the policy per mode, its checks, the
stage the worker runs around every engine, and the record of refusals."""

from __future__ import annotations

import importlib.util
import logging

from imagine.moderation.classifiers import (
    NUDENET_CLASSES,
    MissingExtra,
    image_classifier_loader,
    require,
)
from imagine.moderation.endpoint import ModerationEndpoint
from imagine.moderation.moderator import ContentRefused, Moderator, Refusal
from imagine.moderation.policy import Policy, check_classes, load_policy
from imagine.settings import Settings, SettingsError

__all__ = ["ContentRefused", "Moderator", "Policy", "Refusal", "build_moderator"]

log = logging.getLogger("imagine.moderation")


def build_moderator(settings: Settings) -> Moderator | None:
    """The process's moderator from the settings, or None when moderation is off.

    The policy and its lists are read and checked here, in every process, and so
    is every package the policy's checks need, so a bad file or a missing extra
    stops the start; models load later, in `Moderator.prepare`. The built-in
    policy runs without the text classifier when its extra is not installed
    (with a warning); an operator's own policy that names a check whose
    package is missing is an error.
    """
    if not settings.moderation:
        return None
    try:
        policy = load_policy(
            settings.moderation_policy,
            operator_words=settings.moderation_words,
            operator_hashes=settings.moderation_image_hashes,
        )
        if policy.uses_text_classifier and importlib.util.find_spec("profanity_check") is None:
            if settings.moderation_policy is not None:
                require("profanity_check", "the policy's text_classifier")
            log.warning(
                "moderation: the text classifier is not installed "
                "(pip install 'imagine[moderation]'); prompts are checked by the word lists only"
            )
            policy = policy.without_text_classifier()
        if policy.uses_image_hashes:
            require("imagehash", "the policy's image hash lists")
        spec = settings.moderation_image_classifier
        image_classifier = image_classifier_loader(spec) if policy.uses_image_classifier else None
        if image_classifier is not None and spec == "nudenet":
            check_classes(policy, NUDENET_CLASSES)
        return Moderator(
            policy,
            endpoint=_endpoint(settings),
            endpoint_fail_open=settings.moderation_endpoint_fail_open,
            image_classifier=image_classifier,
        )
    except (ValueError, MissingExtra) as exc:
        raise SettingsError(f"invalid configuration: {exc}") from None


def _endpoint(settings: Settings) -> ModerationEndpoint | None:
    if not settings.moderation_endpoint_url:
        return None
    key = settings.moderation_endpoint_key
    return ModerationEndpoint(
        settings.moderation_endpoint_url,
        api_key=key.get_secret_value() if key else None,
        model=settings.moderation_endpoint_model,
        timeout=settings.moderation_endpoint_timeout_seconds,
    )
