"""GRACE's codebook and MELO's router: a key that was added is found again; activations read in one pass."""
import torch

from editspec.backends.melo.router import Router
from editspec.families.memory.codebook import Codebook
from tiny import tiny_model, tiny_tokenizer


def test_a_radius_grown_to_a_key_routes_that_key():
    # Coverage grows a radius to exactly the new key's distance.  With over 25 keys torch's
    # default cdist switches to a matrix-product form that loses digits; before routing used
    # one distance for both, about half of these keys fell just outside (training then crashed).
    for seed in range(50):
        g = torch.Generator().manual_seed(seed)
        book = Codebook.empty(1536)
        for i, far in enumerate(torch.randn(40, 1536, generator=g) * 100):
            book.add(far, label=1000 + i, eps_init=1.0)
        first = torch.randn(1536, generator=g) * 30
        book.add(first, label=7, eps_init=1.0)
        second = first + torch.randn(1536, generator=g) * 0.2      # same label, just past the radius
        index = book.add(second, label=7, eps_init=8.0)
        assert index == 40                                        # it grew the first one's entry
        assert int(book.route(second[None])[0]) == index


def test_router_finds_every_point_it_kept():
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        router = Router.empty(1536)
        for i, far in enumerate(torch.randn(40, 1536, generator=g) * 100):
            router.add(far, label=1000 + i, block=i, radius=1.0)
        first = torch.randn(1536, generator=g) * 30
        for j in range(3):                  # same label: one cluster whose radius is its spread
            router.add(first + torch.randn(1536, generator=g) * 0.2, label=7, block=40, radius=0.5)
        assert bool((router.route(router.points) == router.point_block).all())


def test_activation_pairs_are_the_input_and_output_passes_in_one():
    from editspec.families.memory.codebook import activation_pairs, activations

    model, tok = tiny_model("llama"), tiny_tokenizer()
    path = "model.layers.1.mlp.down_proj"
    sequences = [[5, 17, 33, 2, 9], [8, 3], [4, 4, 6, 19]]
    pairs = activation_pairs(model, tok, path, sequences, batch_size=2)
    inputs = activations(model, tok, path, sequences, where="input", batch_size=2)
    outputs = activations(model, tok, path, sequences, where="output", batch_size=2)
    assert [a.shape[0] for a, _ in pairs] == [5, 2, 4]
    assert all(torch.equal(a, i) and torch.equal(o, x) for (a, o), i, x in zip(pairs, inputs, outputs))
    assert pairs[0][0].shape[1] != pairs[0][1].shape[1]   # d_ff in, d_model out
