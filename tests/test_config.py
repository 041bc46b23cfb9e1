"""Config loading and validation: every seed key, and errors that name file, key path and what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from conftest import EXAMPLES

from moa import ConfigError, MoAConfig, load_config
from moa.neurons.llm import LLMConfig

VALID = {
    "proposal_layers": [{"neurons": [{"model": "m/a"}]}],
    "aggregation_layer": {"model": "m/agg"},
}


def layer_config(**neuron: object) -> dict[str, object]:
    return {
        "proposal_layers": [
            {"neurons": [{"model": "m/a"}]},
            {"neurons": [{"model": "m/b", **neuron}]},
        ],
        "aggregation_layer": {"model": "m/agg"},
    }


def error_of(source: object, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(source, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_seed_example_has_every_seed_key() -> None:
    config = load_config(EXAMPLES / "moa_config.yaml")
    assert config.use_annotator and isinstance(config.annotator, LLMConfig)
    assert config.annotator.model == "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
    assert [len(layer.neurons) for layer in config.proposal_layers] == [2, 1]
    first = config.proposal_layers[0].neurons[0]
    assert isinstance(first, LLMConfig)
    assert (first.prompt, first.temperature, first.weight) == (
        "You are a helpful assistant. Provide a concise response.",
        0.7,
        8,
    )
    agg = config.aggregation_layer
    assert (
        agg.shuffle and agg.dropout_rate == 0.2 and "{response_weights}" in agg.aggregation_prompt
    )
    assert isinstance(agg.neuron, LLMConfig) and agg.neuron.temperature == 0.7
    assert agg.neuron.prompt == "You are an aggregator. Synthesize the following responses:"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_loads(path: Path) -> None:
    assert isinstance(load_config(path), MoAConfig)


def test_yaml_text_dict_path_and_str_path(tmp_path: Path) -> None:
    text = "proposal_layers: [{neurons: [{model: m/a}]}]\naggregation_layer: {model: m/agg}\n"
    file = tmp_path / "c.yaml"
    file.write_text(text)
    from_text = load_config(text, is_file_path=False)
    assert (
        from_text
        == load_config(VALID)
        == load_config(file)
        == load_config(str(file), is_file_path=True)
    )


def test_dump_round_trips_and_keeps_the_aggregator_flat() -> None:
    config = load_config(EXAMPLES / "moa_config.yaml")
    dumped = config.model_dump()
    assert dumped["aggregation_layer"]["model"] == "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"
    assert "neuron" not in dumped["aggregation_layer"]
    assert load_config(dumped) == config


def test_config_is_frozen() -> None:
    config = load_config(VALID)
    with pytest.raises(ValueError, match="frozen"):
        config.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("neuron", "path", "fragment"),
    [
        (
            {"temperature": 3.5},
            "proposal_layers[1].neurons[0].temperature",
            "less than or equal to 2",
        ),
        ({"temperature": "hot"}, "proposal_layers[1].neurons[0].temperature", "valid number"),
        ({"weight": -1}, "proposal_layers[1].neurons[0].weight", "greater than or equal to 0"),
        ({"max_tokens": 0}, "proposal_layers[1].neurons[0].max_tokens", "greater than 0"),
        (
            {"tempreature": 1},
            "proposal_layers[1].neurons[0].tempreature",
            "did you mean 'temperature'",
        ),
        (
            {"type": "nonesuch"},
            "proposal_layers[1].neurons[0]",
            "unknown neuron type 'nonesuch'; installed types:",
        ),
        ({"base_url": "ftp://x"}, "proposal_layers[1].neurons[0].base_url", "https?"),
    ],
)
def test_neuron_errors_name_the_key_path(
    neuron: dict[str, object], path: str, fragment: str
) -> None:
    error = error_of(layer_config(**neuron))
    assert error.source == "<dict>"
    assert [p for p, _ in error.errors] == [path]
    assert f"{path}: " in str(error) and fragment in str(error)


def test_unknown_key_lists_allowed_keys(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(
        "proposal_layers: [{neurons: [{model: m/a, colour: red}]}]\naggregation_layer: {model: m}\n"
    )
    error = error_of(file)
    assert str(file) in str(error)
    message = str(error)
    assert "proposal_layers[0].neurons[0].colour: unknown key 'colour'" in message
    assert "allowed: api_key_env, base_url, fallbacks, input_cost_per_token, max_retries, max_tokens, model" in message


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ({"proposal_layers": [{"neurons": [{"model": "m"}]}]}, "aggregation_layer", "required"),
        ({**VALID, "proposal_layers": []}, "proposal_layers", "at least 1"),
        (
            {**VALID, "proposal_layers": [{"neurons": []}]},
            "proposal_layers[0].neurons",
            "at least 1",
        ),
        (
            {**VALID, "aggregation_layer": {"model": "m", "dropout_rate": 1.0}},
            "aggregation_layer.dropout_rate",
            "less than 1",
        ),
        (
            {**VALID, "aggregation_layer": {"model": "m", "temperature": -0.1}},
            "aggregation_layer.temperature",
            "greater than or equal to 0",
        ),
        (
            {**VALID, "aggregation_layer": {"model": "m", "shufle": True}},
            "aggregation_layer.shufle",
            "did you mean 'shuffle'",
        ),
        (
            {**VALID, "aggregation_layer": {"model": "m", "aggregation_prompt": "{response}"}},
            "aggregation_layer.aggregation_prompt",
            "{responses}",
        ),
        ({**VALID, "use_annotator": True}, "", "no 'annotator' section"),
        (
            {**VALID, "annotator": {"model": "m", "temperature": 9}},
            "annotator.temperature",
            "less than",
        ),
        ({**VALID, "max_concurrency": 0}, "max_concurrency", "greater than or equal to 1"),
        ({**VALID, "model": "m"}, "model", "indented under 'annotator:'"),
    ],
)
def test_tree_errors(data: dict[str, object], path: str, fragment: str) -> None:
    error = error_of(data)
    assert [p for p, _ in error.errors] == [path]
    assert fragment in str(error)


def test_all_errors_are_reported_at_once() -> None:
    error = error_of(
        {
            "proposal_layers": [{"neurons": [{"model": "m", "temperature": 5, "weight": -2}]}],
            "aggregation_layer": {"model": "m", "dropout_rate": 2},
        }
    )
    assert len(error.errors) == 3


def test_unknown_aggregator_key_lists_its_own_and_neuron_keys() -> None:
    error = error_of({**VALID, "aggregation_layer": {"model": "m", "bogus": 1}})
    assert "aggregation_prompt" in str(error) and "temperature" in str(error)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("proposal_layers: [\n  - x\n", "invalid YAML (line"),
        ("- just\n- a list\n", "must be a mapping"),
        ("", "must be a mapping"),
        ("a: !!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ],
)
def test_yaml_errors(text: str, fragment: str) -> None:
    error = error_of(text, is_file_path=False)
    assert fragment in str(error) and error.source == "<string>"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    error = error_of(tmp_path / "nope.yaml")
    assert "not found" in str(error) and "nope.yaml" in str(error)


def test_seed_indentation_mistake_is_explained() -> None:
    # The seed README's annotator example is not indented; tell the user what happened.
    text = textwrap.dedent("""
        use_annotator: true
        annotator:
        model: "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
        temperature: 0.7
        proposal_layers: [{neurons: [{model: m}]}]
        aggregation_layer: {model: m}
    """)
    message = str(error_of(text, is_file_path=False))
    assert "model: unknown key 'model'" in message and "indented under 'annotator:'" in message


def test_unknown_keys_of_a_plugin_neuron_in_a_layer_list_its_own_keys() -> None:
    from moa.testing import fake_neurons

    with fake_neurons(), pytest.raises(ConfigError) as caught:
        load_config(
            {
                "proposal_layers": [{"neurons": [{"type": "fake", "replys": ["x"]}]}],
                "aggregation_layer": {"type": "fake", "defualt": "y"},
            }
        )
    message = str(caught.value)
    assert (
        "neurons[0].replys: unknown key 'replys' (allowed: default, fallbacks, max_retries, "
        "name, prompt, rate_limit, replies, stream_idle_timeout, stream_timeout, timeout, type, "
        "weight)" in message
    )
    assert "did you mean 'replies'?" in message
    assert "aggregation_layer.defualt" in message and "did you mean 'default'?" in message
