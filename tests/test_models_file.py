"""The one reader of the models file, as the bot's autocomplete catalog uses it (no backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.catalog import MAX_SUGGESTION_LENGTH, Catalog, load_catalog
from inference.local.registry import ModelsFileError as RegistryError
from inference.models_file import ModelsFileError, ModelsFileMissing, read_models_file

SOURCES = {"models.sd15": "a/b", "models.pony": "c/d", "vaes.ft-mse": "e/f", "loras.detail": "g"}
TEXT = 'default_model = "pony"\n' + "".join(f'[{t}]\nsource = "{s}"\n' for t, s in SOURCES.items())


def test_the_catalog_takes_sorted_names_and_the_default_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(TEXT, encoding="utf-8")
    assert load_catalog(path) == Catalog(
        models=["pony", "sd15"], vaes=["ft-mse"], loras=["detail"], default_model="pony"
    )
    read = read_models_file(path)
    assert read.models["sd15"] == {"source": "a/b"} and read.base_dir == tmp_path.resolve()


def test_a_missing_file_is_an_empty_catalog_but_an_error_for_the_reader(tmp_path: Path) -> None:
    assert load_catalog(tmp_path / "none.toml") == Catalog()
    with pytest.raises(ModelsFileMissing, match="IMG2IMG_MODELS"):
        read_models_file(tmp_path / "none.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default_model = 3\n", "default_model must be a model name"),
        ('models = "x"\n', "[models] must hold [models.NAME] tables"),
        ("[other]\n", "unknown top-level key"),
    ],
)
def test_the_catalog_refuses_a_wrong_file_like_the_registry(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelsFileError) as caught:
        load_catalog(path)
    assert message in str(caught.value)
    assert RegistryError is ModelsFileError


def test_a_lora_list_longer_than_discord_allows_is_left_out_not_cut() -> None:
    long_name = "x" * 60
    catalog = Catalog(loras=[long_name, "detail", "detail-" + "y" * 93])
    # "detail-yyy…" alone fits 100 characters; after "xxx…," it would not
    assert catalog.suggest("loras", "detai") == ["detail", "detail-" + "y" * 93]
    assert catalog.suggest("loras", f"{long_name},detai") == [f"{long_name},detail"]
    assert all(len(s) <= MAX_SUGGESTION_LENGTH for s in catalog.suggest("loras", f"{long_name},"))


def test_suggestions_from_thousands_of_names_list_the_prefix_matches_first() -> None:
    names = sorted([f"style-{i:05}" for i in range(10_000)] + [f"s-{i:05}" for i in range(10_000)])
    catalog = Catalog(loras=[*names, "as-inside"])
    assert catalog.suggest("loras", "s") == names[:25]  # all start with it
    assert catalog.suggest("loras", "s-0000") == names[:10]
    assert catalog.suggest("loras", "s-in") == ["as-inside"]
