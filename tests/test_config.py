from infill_lsp.config import Settings, merge


def test_initialization_options_are_camel_case():
    settings = merge(Settings(), {"candidates": 6, "maxTokens": 48, "steps": 8, "languages": {"markdown": False},
                                  "engineAddress": "/tmp/x.sock", "showInvalid": True})
    assert (settings.candidates, settings.max_tokens, settings.steps) == (6, 48, 8)
    assert settings.engine_address == "/tmp/x.sock" and settings.show_invalid
    assert not settings.enabled_for("markdown") and settings.enabled_for("python")


def test_did_change_configuration_section_and_bad_values():
    settings = merge(Settings(), {"infill": {"candidates": "many", "steps": 4, "unknownKey": 1}})
    assert settings.candidates == 4 and settings.steps == 4
    assert merge(settings, None) == settings
    assert merge(settings, [1, 2]) == settings


def test_wildcard_language_default_and_budgets():
    settings = Settings(languages={"*": False, "python": True})
    assert settings.enabled_for("python") and not settings.enabled_for("go")
    auto, invoked = settings.budget(False), settings.budget(True)
    assert auto.candidates == 4 and invoked.candidates == 8 and invoked.steps > auto.steps
    assert Settings(candidates=10_000).budget(False).candidates == 32


def test_seed_setting():
    assert Settings().seed is None
    assert merge(Settings(), {"seed": 3}).seed == 3
    assert merge(Settings(), {"seed": "x"}).seed is None
