"""Model builders, loaders (by path, errors), text encoding and reward scorers."""

import pytest
import torch

from infalign.errors import ConfigError
from infalign.models import (
    GoldScorer,
    RewardScorer,
    Scorer,
    build_toy_lm,
    build_toy_reward_model,
    encode_prompt_response,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from infalign.toy import ToyWorld


@pytest.fixture(scope="module")
def world():
    return ToyWorld(seed=0)


@pytest.fixture(scope="module")
def tok(world):
    return world.tokenizer()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    """A tiny LM and a tiny reward model saved with their tokenizer."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    lm, rm = build_toy_lm(tok, "tiny"), build_toy_reward_model(tok, "tiny")
    for name, model in (("lm", lm), ("rm", rm)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root, lm, rm


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_toy_sizes(tok):
    sizes = {s: _n_params(build_toy_lm(tok, s)) for s in ("tiny", "small", "medium")}
    assert 0.1e6 <= sizes["tiny"] <= 0.3e6
    assert 0.5e6 <= sizes["small"] <= 1.0e6
    assert 2e6 <= sizes["medium"] <= 4e6
    rm = build_toy_reward_model(tok, "tiny")
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    with pytest.raises(ConfigError, match=r"toy\.reference\.size='huge'.*tiny"):
        build_toy_lm(tok, "huge")


def test_encode_prompt_response(tok):
    enc = encode_prompt_response(tok, ["a1 a2 ->", "a3 ->"], ["b1 b2", "b3 b4 b5"])
    ids, am, rm = enc["input_ids"], enc["attention_mask"], enc["response_mask"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert ids.shape == (2, 6)
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == ["a1", "a2", "->", "b1", "b2", "<eos>"]
    assert ids[1].tolist()[-1] == eos and ids[1, 0] == tok.convert_tokens_to_ids("a3")
    assert am.tolist() == [[1] * 6, [1] * 6] and rm.tolist() == [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
    ]
    enc = encode_prompt_response(tok, ["a1 ->"], ["b1"], append_eos=False)
    assert enc["input_ids"].tolist() == [tok.convert_tokens_to_ids(["a1", "->", "b1"])]
    # Right padding; over max_length the prompt loses its *first* tokens.
    enc = encode_prompt_response(tok, ["a1 a2 a3 ->", "a1 ->"], ["b1", ""], max_length=4)
    assert tok.convert_ids_to_tokens(enc["input_ids"][0].tolist()) == ["a3", "->", "b1", "<eos>"]
    assert enc["input_ids"][1].tolist()[-1] == pad and enc["attention_mask"][1].tolist() == [
        1,
        1,
        1,
        0,
    ]


def test_load_by_path_round_trip(saved, tok):
    root, lm, rm = saved
    ids = tok(["a1 a2 -> b1 b2"], return_tensors="pt")["input_ids"]
    lm2 = load_causal_lm(root / "lm")
    torch.testing.assert_close(lm2(ids).logits, lm(ids).logits)
    rm2 = load_reward_model(str(root / "rm"))
    torch.testing.assert_close(rm2(ids).logits, rm(ids).logits)
    t_left, t_right = load_tokenizer(root / "lm"), load_tokenizer(root / "rm", padding_side="right")
    assert (t_left.padding_side, t_right.padding_side) == ("left", "right")
    assert t_left("a1 b1")["input_ids"] == tok("a1 b1")["input_ids"]
    with pytest.raises(ConfigError, match="padding_side"):
        load_tokenizer(root / "lm", padding_side="middle")


def test_missing_path_and_wrong_kind_errors(saved, tmp_path):
    root, _, _ = saved
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"policy\.name_or_path.*nope"):
        load_causal_lm(missing)
    with pytest.raises(FileNotFoundError, match=r"reward\.name_or_path.*nope"):
        load_reward_model(str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    with pytest.raises(
        ValueError, match=r"policy\.name_or_path.*GPT2ForSequenceClassification.*not a causal"
    ):
        load_causal_lm(root / "rm")
    with pytest.raises(
        ValueError, match=r"reward\.name_or_path.*GPT2LMHeadModel.*not a sequence-classification"
    ):
        load_reward_model(root / "lm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_causal_lm(tmp_path / "empty")


def test_tokenizer_without_pad_falls_back_to_eos(tmp_path, tok):
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>")
    bare.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == "<eos>" and loaded.pad_token_id == tok.eos_token_id


def test_reward_scorer_batches_and_padding_do_not_change_scores(saved, world):
    root, _, _ = saved
    scorer = RewardScorer(
        load_reward_model(root / "rm"), load_tokenizer(root / "rm", "right"), batch_size=1
    )
    assert isinstance(scorer, Scorer) and isinstance(GoldScorer(world), Scorer)
    xs, ys = world.reference_corpus(32, 2, seed=0)  # 64 rows: length-sorted into 2 forwards below
    one = scorer.score(xs, ys)
    scorer.batch_size = 64
    assert [len(c) for c in scorer.chunks(xs, ys)] == [32, 32]
    many = scorer.score(xs, ys)
    assert one.dtype == torch.float32 and one.shape == (64,) and not one.requires_grad
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)  # each score is its own row's, in order
    assert one.std() > 0  # a random model still gives different responses different scores
    torch.testing.assert_close(GoldScorer(world).score(xs, ys), world.gold_reward(xs, ys))


def test_reward_scorer_gives_float32_scores_of_its_own_precision_inside_a_lightning_step(saved, world):
    """GPU review: Lightning's bf16-true sets torch's default dtype to bfloat16 for a predict step, and the scores'
    buffer became bfloat16 (an index_put dtype error in the calibration stage); its bf16-mixed autocast rounded the
    score head of a float32 reward model to bfloat16 (ties among a prompt's samples, C_hat moved by 1/K). The
    scores are float32, and equal to the plain ones, under either."""
    root, _, _ = saved
    scorer = RewardScorer(load_reward_model(root / "rm"), load_tokenizer(root / "rm", "right"), batch_size=64)
    xs, ys = world.reference_corpus(16, 2, seed=0)
    plain = scorer.score(xs, ys)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        under_default = scorer.score(xs, ys)
    finally:
        torch.set_default_dtype(before)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = scorer.score(xs, ys)
    for scores in (under_default, under_autocast):
        assert scores.dtype == torch.float32 and torch.equal(scores, plain)


def test_reward_scorer_says_which_rows_it_read_cut(saved, world):
    """score_and_cut (eval.reward_cut's source): a row's flag is whether its input was longer than max_length --
    as reward_model_inputs encodes it alone -- and its score is score()'s, batched or not."""
    from infalign.models.reward import reward_model_inputs

    root, _, _ = saved
    tok = load_tokenizer(root / "rm", "right")
    xs, ys = world.reference_corpus(8, 2, seed=0)
    lengths = [len(reward_model_inputs(tok, [x], [y])["input_ids"][0]) for x, y in zip(xs, ys)]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the rows are longer
    scorer = RewardScorer(load_reward_model(root / "rm"), tok, batch_size=4, max_length=limit)
    scores, cut = scorer.score_and_cut(xs, ys)
    assert cut.dtype == torch.bool and cut.tolist() == [n > limit for n in lengths] and 0 < int(cut.sum()) < len(xs)
    assert torch.equal(scores, scorer.score(xs, ys))
    assert not RewardScorer(scorer.model, tok, batch_size=4).score_and_cut(xs, ys)[1].any()  # no max_length: none


def test_reward_scorer_nan_raises(tok, world):
    rm = build_toy_reward_model(tok, "tiny")
    with torch.no_grad():
        rm.score.weight.fill_(float("nan"))
    xs, ys = world.reference_corpus(2, 1, seed=0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        RewardScorer(rm, tok).score(xs, ys)


def _byte_bpe():
    """A tiny byte-level BPE tokenizer (GPT-2 / Llama-3 / Qwen style): ``" Sure"`` and ``"Sure"`` are
    different tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["Human: can you help? Assistant: Sure, I can help.", "Sure thing. Assistant: Sure"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def test_reward_inputs_drop_the_responses_leading_whitespace():
    """Datasets store responses without the space after "Assistant:" (data/formats.py); a policy
    continuing the prompt samples " Sure". The reward model must read both the same way (control: the
    byte-level tokenizer itself does not)."""
    from infalign.models.reward import reward_model_inputs

    bpe = _byte_bpe()
    assert bpe(" Sure", add_special_tokens=False)["input_ids"] != bpe("Sure", add_special_tokens=False)["input_ids"]
    prompt = ["\n\nHuman: can you help?\n\nAssistant:"]
    sampled = reward_model_inputs(bpe, prompt, [" Sure, I can help."])
    stored = reward_model_inputs(bpe, prompt, ["Sure, I can help."])
    assert all(torch.equal(sampled[k], stored[k]) for k in sampled)


def test_the_reward_format_says_where_the_score_is_read_when_pad_is_eos(tok):
    """GPT-2 / Pythia tokenizers pad with their eos: HF's causal classifier reads a row at its last non-pad
    token, so the appended eos reads as padding and the score is the last response token's. The format
    says so (docs/method.md §6, "The reward model's eos"); with a pad of its own (the toy tokenizer) the
    score is read at the eos and the format -- part of the toy world's reward fingerprint -- is as before."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from infalign.models.reward import reward_input_format, reward_model_inputs

    bpe = _byte_bpe()  # pad == eos
    fmt = reward_input_format(bpe, 64)
    assert fmt == ("rm-input-v3:{prompt} {response}<eos>;score read at the last token before padding "
                   "(pad == eos: the appended <eos> counts as padding);max_length=64")
    assert reward_input_format(tok) == "rm-input-v3:{prompt}{response}<eos>"  # the toy world's, unchanged
    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(GPT2Config(vocab_size=len(bpe), n_positions=64, n_embd=16, n_layer=1,
                                                  n_head=2, num_labels=1, pad_token_id=bpe.pad_token_id)).eval()
    prompt, response = ["Human: can you help? Assistant:"], ["Sure, I can help."]
    row = reward_model_inputs(bpe, prompt, response)["input_ids"]
    assert row[0, -1] == bpe.eos_token_id
    with torch.no_grad():
        before_eos = rm(input_ids=row[:, :-1]).logits[0, 0]
        rm.config.pad_token_id = len(bpe)  # no token is padding: read at the eos itself
        at_eos = rm(input_ids=row).logits[0, 0]
        rm.config.pad_token_id = bpe.pad_token_id
    score = RewardScorer(rm, bpe).score(prompt, response)[0]
    # the same causal prefix, one forward shorter: equal to float32 rounding (default assert_close tolerances)
    torch.testing.assert_close(score, before_eos)
    assert abs(float(score) - float(at_eos)) > 1e-3  # control: the eos's own hidden state scores otherwise


def test_text_pair_layout_is_refused_for_a_tokenizer_without_one(tok):
    from infalign.models.builders import text_pair_tokens

    with pytest.raises(ConfigError, match=r"reward\.input.*'joined'"):
        text_pair_tokens(tok)  # the toy (GPT-2-like) tokenizer just concatenates a pair
    with pytest.raises(ConfigError, match=r"reward\.input"):
        encode_prompt_response(tok, ["a"], ["b"], pair=True)


def test_text_pair_truncation_keeps_both_separators_and_cuts_the_prompt_first():
    """[CLS] prompt [SEP] response [SEP] within max_length: the prompt loses its beginning, the
    response is cut only when the prompt is down to one token; the token types follow the segments."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(20)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])},
                                         unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    bert = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    ids = {w: bert.convert_tokens_to_ids(w) for w in [*words, "[CLS]", "[SEP]"]}
    prompt, response = "w0 w1 w2 w3 w4 w5", "w10 w11 w12"
    full = encode_prompt_response(bert, [prompt], [response], pair=True)
    assert full["input_ids"][0].tolist() == bert(prompt, response)["input_ids"]
    assert full["token_type_ids"][0].tolist() == bert(prompt, response)["token_type_ids"]
    cut = encode_prompt_response(bert, [prompt], [response], pair=True, max_length=8)
    c, s = ids["[CLS]"], ids["[SEP]"]
    assert cut["input_ids"][0].tolist() == [c, ids["w4"], ids["w5"], s, ids["w10"], ids["w11"], ids["w12"], s]
    assert cut["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert cut["response_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    tight = encode_prompt_response(bert, [prompt], [response], pair=True, max_length=6)  # prompt at one token
    assert tight["input_ids"][0].tolist() == [c, ids["w5"], s, ids["w10"], ids["w11"], s]


# ---------------------------------------------------------------- guards found by mutation testing


def test_reward_scorer_scores_in_eval_mode_whatever_the_models_mode():
    """A reward model with dropout, left in train mode (e.g. right after Bradley-Terry training), scores
    as in eval mode, the same on every call."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    world = ToyWorld(seed=0)
    tok = world.tokenizer()
    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, num_labels=1,
        pad_token_id=tok.pad_token_id, resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    xs, ys = world.reference_corpus(4, 2, seed=0)
    rm.eval()
    want = RewardScorer(rm, tok).score(xs, ys)
    rm.train()
    torch.testing.assert_close(RewardScorer(rm, tok).score(xs, ys), want)
    torch.testing.assert_close(RewardScorer(rm, tok).score(xs, ys), want)


def test_reward_scorer_forwards_at_most_batch_size_rows():
    world = ToyWorld(seed=0)
    tok = world.tokenizer()
    scorer = RewardScorer(build_toy_reward_model(tok, "tiny"), tok, batch_size=4)
    xs, ys = world.reference_corpus(5, 2, seed=0)
    chunks = scorer.chunks(xs, ys)
    assert max(len(c) for c in chunks) <= 4
    assert sorted(torch.cat(chunks).tolist()) == list(range(10))


def _byte_level_pair_tokenizer():
    """RoBERTa-style: byte-level BPE with a text-pair template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["Human: can you help? Assistant: Sure, I can help.", "TL;DR: Sure thing. Assistant: Sure"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def test_a_text_pair_reads_the_response_without_a_leading_space():
    """The lead space is for joined rows of a byte-level tokenizer; a pair's second text is encoded alone."""
    from infalign.models.builders import response_lead
    from infalign.models.reward import reward_model_inputs

    tok = _byte_level_pair_tokenizer()
    assert response_lead(tok) == " "
    prompt = "\n\nHuman: can you help?\n\nAssistant:"
    want = tok(prompt, "Sure, I can help.")["input_ids"]
    for written in ("Sure, I can help.", " Sure, I can help."):
        assert reward_model_inputs(tok, [prompt], [written], pair=True)["input_ids"][0].tolist() == want


def test_response_lead_is_empty_when_the_spaced_word_does_not_continue_the_text():
    """Llama-2-style SentencePiece (normalizer: prepend '▁', spaces -> '▁'): ' Sure' != 'Sure', but
    'TL;DR: Sure' != 'TL;DR:' + ' Sure' either -- no lead (the tokenizer adds its own ▁)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from infalign.models.builders import response_lead

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = ["TL;DR: Sure, a summary. Sure thing.", "Human: help? Assistant: Sure"] * 10
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>", "</s>"],
        initial_alphabet=sorted({c for t in corpus for c in t} | {"▁"})))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>", pad_token="</s>")

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    assert ids(" Sure") != ids("Sure")
    assert ids("TL;DR:") + ids(" Sure") != ids("TL;DR: Sure")
    assert response_lead(tok) == ""


def test_a_joined_row_cut_at_max_length_gets_no_eos(tok):
    """A response cut by max_length is not finished: no eos is written over its last kept token."""
    enc = encode_prompt_response(tok, ["a1 ->"], ["b1 b2 b3 b4"], max_length=4)
    assert tok.convert_ids_to_tokens(enc["input_ids"][0].tolist()) == ["->", "b1", "b2", "b3"]
    assert enc["response_mask"][0].tolist() == [0, 1, 1, 1]


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_response_gets_no_lone_space_before_its_eos(empty):
    """An empty (or all-whitespace) response stays empty in a joined reward row: the row is the
    prompt's own tokens then the eos -- no lone ``" "`` token (the byte-level lead, ``response_lead``)
    between them -- and its response mask covers the eos alone. Expected ids come from the tokenizer
    itself (the prompt encoded alone + ``eos_token_id``); exact equality, no tolerance. Control: the
    lead is a space here, and a non-empty response does get it (``" Sure"`` is one token after it)."""
    from infalign.models.builders import response_lead
    from infalign.models.reward import reward_model_inputs

    bpe = _byte_bpe()
    assert response_lead(bpe) == " "  # so the guard is what keeps the space out
    space = bpe(" ", add_special_tokens=False)["input_ids"]
    assert len(space) == 1
    prompt = "Human: can you help? Assistant:"
    alone = bpe(prompt, add_special_tokens=False)["input_ids"]
    enc = reward_model_inputs(bpe, [prompt], [empty])
    assert enc["input_ids"][0].tolist() == alone + [bpe.eos_token_id]
    assert space[0] not in enc["input_ids"][0].tolist()
    assert enc["response_mask"][0].tolist() == [0] * len(alone) + [1]
    control = reward_model_inputs(bpe, [prompt], ["Sure"])["input_ids"][0].tolist()
    assert control == alone + bpe(" Sure", add_special_tokens=False)["input_ids"] + [bpe.eos_token_id]


def test_the_end_token_is_not_doubled_when_the_suffix_is_the_eos():
    """DeBERTa-v3's tokenizer has ``[SEP]`` both as its template's suffix and as its eos: a joined row
    is ``[CLS] prompt response [SEP]`` -- the suffix *replaces* the appended eos, it is not followed
    by a second one (``suffix or [eos]``). Ids by hand from the vocabulary: [CLS] 2, hello 4,
    world 5, [SEP] 3; exact equality. ``min_row_length`` (prefix + end + one prompt and one response
    token) is then 4, as its docstring says for BERT joined."""
    from infalign.models.builders import min_row_length, row_special_tokens
    from test_data import styled_word_tokenizer

    t = styled_word_tokenizer("bert", ["hello", "world"])
    t.eos_token = "[SEP]"
    assert t.eos_token_id == 3
    assert row_special_tokens(t) == ([2], [], [3], None)
    enc = encode_prompt_response(t, ["hello"], ["world"])
    assert enc["input_ids"].tolist() == [[2, 4, 5, 3]]
    assert enc["response_mask"].tolist() == [[0, 0, 1, 1]]
    assert min_row_length(t) == 4
    # control: without an eos the end is the suffix alone as well
    no_eos = styled_word_tokenizer("bert", ["hello", "world"])
    assert no_eos.eos_token_id is None and row_special_tokens(no_eos) == ([2], [], [3], None)


def test_an_unended_response_is_scored_without_the_eos_where_the_reward_model_reads_it(tok):
    """Real-data review: a response that hit max_new_tokens was scored with the eos appended -- for a reward model
    that reads it (a pad of its own: cleanrl's TL;DR models, ``reward.pad_token``, Qwen/Llama tokenizers) as
    if the response had ended; cleanrl and TRL score it at its last token, without one. With
    ``reward.unended_eos: false`` (the HF default) such a row ends at its last token; an ended one keeps its eos;
    with ``true`` (the toy world's reward model, trained with the eos after every response) nothing changes, and
    neither does a tokenizer whose pad is the eos (its classifier reads the token before it anyway)."""
    import copy

    from infalign.models.builders import encode_prompt_response
    from infalign.models.reward import RewardScorer, eos_says_ended, reward_input_format, score_rows

    assert tok.pad_token_id not in (None, tok.eos_token_id) and eos_says_ended(tok)
    prompts, responses = ["a b", "a b", "c"], ["x y z", "x y z", "w"]
    enc = encode_prompt_response(tok, prompts, responses, ended=[True, False, False])
    eos, ids = tok.eos_token_id, enc["input_ids"]
    lengths = enc["attention_mask"].sum(1).tolist()
    assert ids[0, lengths[0] - 1] == eos and lengths[1] == lengths[0] - 1 and eos not in ids[1, : lengths[1]].tolist()
    model = build_toy_reward_model(tok, "tiny").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # (a head of zeros scores every row alike)
    reads, keeps = RewardScorer(model, tok, unended_eos=False), RewardScorer(model, tok)
    plain = keeps.score(prompts, responses)
    assert float(plain[0]) == pytest.approx(float(plain[1]), abs=1e-6)  # (one row twice; float32 batch rounding)
    scores, _ = score_rows(reads, prompts, responses, torch.tensor([True, False, False]))
    assert float(scores[0]) == pytest.approx(float(plain[0]), abs=1e-6)
    assert abs(float(scores[1] - plain[1])) > 1e-3  # the unended row is read at its last token, not at an eos
    without = encode_prompt_response(tok, prompts[1:2], responses[1:2], append_eos=False)
    with torch.no_grad():
        direct = model(input_ids=without["input_ids"], attention_mask=without["attention_mask"]).logits[0, 0]
    assert scores[1] == pytest.approx(float(direct), abs=1e-6)  # (float32, one row)
    assert torch.equal(score_rows(keeps, prompts, responses, torch.tensor([True, False, False]))[0], plain)
    assert "unended" in reads.input_format and "unended" not in keeps.input_format
    eos_pad = copy.deepcopy(tok)
    eos_pad.pad_token = eos_pad.eos_token  # (pad == eos: the appended eos is padding to the classifier)
    assert not eos_says_ended(eos_pad) and not RewardScorer(model, eos_pad, unended_eos=False).drop_unended_eos
    assert reward_input_format(eos_pad, unended_eos=False) == reward_input_format(eos_pad)
    assert not eos_says_ended(tok, pair=True)
    # review: an encoder whose own closing token is its eos (RoBERTa's </s>, DeBERTa-v3's [SEP]) reads its score at
    # [CLS]: that token is its template's, kept on an unended row
    from test_data import styled_word_tokenizer

    bert = styled_word_tokenizer("bert", ["hello", "world"])
    bert.eos_token = "[SEP]"
    assert not eos_says_ended(bert) and reward_input_format(bert, unended_eos=False) == reward_input_format(bert)
    kept = encode_prompt_response(bert, ["hello"], ["world"], ended=[False])["input_ids"][0].tolist()
    assert kept[-1] == bert.sep_token_id
