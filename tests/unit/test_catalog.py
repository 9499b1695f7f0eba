import numbers

from fedsim import catalog


def test_every_default_number_is_numeric_and_sourced():
    cat = catalog.load()
    for kind in ("devices", "networks"):
        for name, entry in cat[kind].items():
            assert len(entry.get("source", "")) > 20, f"{kind}.{name} has no source"
            for key, value in entry.items():
                if key not in ("source", "networks"):
                    assert isinstance(value, numbers.Real), f"{kind}.{name}.{key} = {value!r} is not a number"
            for net in entry.get("networks", {}):
                assert net in cat["networks"]
    assert isinstance(cat["energy"]["grid_gco2_per_kwh"], float) and cat["energy"]["grid_source"]
    assert isinstance(cat["runtime_overhead_bytes"], float)


def test_user_catalog_merges_key_by_key(tmp_path):
    extra = tmp_path / "cat.yaml"
    extra.write_text("devices:\n  laptop:\n    memory_gb: 32.0\n")
    cat = catalog.load(str(extra))
    assert cat["devices"]["laptop"]["memory_gb"] == 32.0
    assert cat["devices"]["laptop"]["peak_flops"] == catalog.load()["devices"]["laptop"]["peak_flops"]


def test_model_catalog_has_the_reference_models():
    models = catalog.model_configs()
    for name in ("llama-2-7b", "llama-2-70b", "mistral-7b", "qwen2.5-0.5b", "tinyllama-1.1b", "fedsim-tiny-llama"):
        assert models[name]["model_type"] in ("llama", "mistral", "qwen2")
