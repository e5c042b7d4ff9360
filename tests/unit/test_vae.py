"""beta-VAE model: omicverse-compatible layout (both directions), sampling, loss, weight loading errors."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from b2s.errors import InputError
from b2s.model.vae import BetaVAE, kl_penalty, kl_term, load_weights, vae_loss

N_GENES, LATENT = 100, 16


@pytest.fixture(scope="module")
def ov_vae():
    """omicverse's bulk2single/_vae.py loaded by path (importing the omicverse package takes ~20 s)."""
    spec = importlib.util.find_spec("omicverse")
    path = os.path.join(os.path.dirname(spec.origin), "bulk2single", "_vae.py")
    mod_spec = importlib.util.spec_from_file_location("ov_bulk2single_vae", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _ov_model(ov_vae, n_genes=N_GENES, latent=LATENT):
    return ov_vae.VAE(n_genes, [2048, 1024, 512], latent)


def test_layout_matches_omicverse(ov_vae):
    ours = BetaVAE(N_GENES, LATENT).state_dict()
    theirs = _ov_model(ov_vae).state_dict()
    assert list(ours) == list(theirs)  # same keys in the same order
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert tuple(ours["encoder.0.weight"].shape) == (2048, N_GENES)
    assert tuple(ours["encoder.3.weight"].shape) == (2 * LATENT, 512)
    assert tuple(ours["decoder.0.weight"].shape) == (512, LATENT)
    assert tuple(ours["decoder.3.weight"].shape) == (N_GENES, 2048)


def test_our_weights_run_identically_in_omicverse(ov_vae, tmp_path):
    torch.manual_seed(0)
    ours = BetaVAE(N_GENES, LATENT).eval()
    path = tmp_path / "vae.pth"
    torch.save(ours.state_dict(), path)
    theirs = _ov_model(ov_vae)
    theirs.load_state_dict(torch.load(path))  # how omicverse's load_vae reads it
    theirs.eval()
    x = torch.rand(7, N_GENES)
    z = torch.randn(7, LATENT)
    with torch.no_grad():
        assert torch.equal(ours.decode(z), theirs.decode(z))
        mu, logvar = ours.encode(x)
        assert torch.equal(torch.cat([mu, logvar], 1), theirs.encode(x))


def test_omicverse_weights_load_into_ours(ov_vae, tmp_path):
    torch.manual_seed(1)
    theirs = _ov_model(ov_vae).eval()
    path = tmp_path / "ov_vae.pth"
    torch.save(theirs.state_dict(), path)  # what omicverse's Bulk2Single.train saves
    ours = load_weights(path, N_GENES, LATENT, "cpu").eval()
    z = torch.randn(5, LATENT)
    with torch.no_grad():
        assert torch.equal(ours.decode(z), theirs.decode(z))
        # omicverse's get_hidden uses the standard reparameterisation, as our forward does
        x = torch.rand(5, N_GENES)
        torch.manual_seed(3)
        h_theirs = theirs.get_hidden(x)
        torch.manual_seed(3)
        mu, logvar = ours.encode(x)
        h_ours = ours.sample(mu, logvar)
        assert torch.allclose(h_ours, h_theirs, atol=1e-6)


def test_forward_uses_standard_reparameterisation():
    torch.manual_seed(2)
    model = BetaVAE(N_GENES, LATENT).eval()
    x = torch.rand(6, N_GENES)
    with torch.no_grad():
        x_hat, mu, logvar = model(x, torch.Generator().manual_seed(5))
        eps = torch.randn(6, LATENT, generator=torch.Generator().manual_seed(5))
        expected = model.decode(mu + eps * torch.exp(logvar / 2))
    assert torch.allclose(x_hat, expected, atol=1e-6)
    assert (x_hat >= 0).all()  # final ReLU
    assert x_hat.shape == (6, N_GENES) and mu.shape == logvar.shape == (6, LATENT)


def test_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    x, x_hat = rng.random((4, 10)), rng.random((4, 10))
    mu, logvar = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mse = np.mean((x_hat - x) ** 2)
    kl = 0.5 * np.sum(np.exp(logvar) + mu**2 - 1 - logvar) / (4 * 10)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    loss, recon, kl_t = vae_loss(t(x_hat), t(x), t(mu), t(logvar), beta=4.0)
    assert recon.item() == pytest.approx(mse, rel=1e-12)
    assert kl_t.item() == pytest.approx(kl, rel=1e-12)
    assert loss.item() == pytest.approx(mse + 4.0 * kl, rel=1e-12)
    assert kl_term(t(np.zeros((2, 3))), t(np.zeros((2, 3))), 10).item() == 0.0  # N(0,1) posterior: no KL


def test_load_weights_shape_mismatch_is_one_line(tmp_path):
    path = tmp_path / "vae.pth"
    torch.save(BetaVAE(N_GENES, LATENT).state_dict(), path)
    with pytest.raises(InputError) as err:
        load_weights(path, 120, LATENT)
    msg = str(err.value)
    assert msg == (
        f"--vae_weights {path} was trained on {N_GENES} genes, model input has 120; "
        "retrain or pass the model input it was trained on"
    )
    with pytest.raises(InputError, match=f"hidden_size {LATENT}, --hidden_size is 256; pass --hidden_size {LATENT}"):
        load_weights(path, N_GENES, 256)


@pytest.mark.parametrize("content", ["list", "text", "partial"])
def test_load_weights_rejects_non_state_dicts(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "text":
        path.write_text("not torch\n")
    else:
        sd = BetaVAE(N_GENES, LATENT).state_dict()
        sd.pop("decoder.3.bias")
        torch.save(sd, path)
    with pytest.raises(InputError) as err:
        load_weights(path, N_GENES, LATENT)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        load_weights(tmp_path / "missing.pth", N_GENES, LATENT)


def test_omicverse_reparameterisation_is_opt_in_and_leaves_the_weights_alone(ov_vae):
    torch.manual_seed(4)
    std_model = BetaVAE(N_GENES, LATENT).eval()
    ov_form = BetaVAE(N_GENES, LATENT, reparam="omicverse").eval()
    ov_form.load_state_dict(std_model.state_dict())
    assert list(ov_form.state_dict()) == list(_ov_model(ov_vae).state_dict())
    x = torch.rand(6, N_GENES)
    with torch.no_grad():
        x_hat, mu, logvar = ov_form(x, torch.Generator().manual_seed(5))
        eps = torch.randn(6, LATENT, generator=torch.Generator().manual_seed(5))
        std = torch.exp(logvar / 2)
        assert torch.allclose(x_hat, ov_form.decode(eps + mu * std), atol=1e-6)
        # omicverse's own forward pass, same noise: z = eps + mu * std
        theirs = _ov_model(ov_vae).eval()
        theirs.load_state_dict(std_model.state_dict())
        torch.manual_seed(9)
        out = theirs(x, torch.device('cpu'))
        torch.manual_seed(9)
        eps2 = torch.randn(6, LATENT)
        assert torch.allclose(out[0], ov_form.decode(eps2 + mu * std), atol=1e-5)
        assert torch.equal(ov_form.latent_mean(mu, logvar), mu * std)
        assert torch.equal(std_model.latent_mean(mu, logvar), mu)
    with pytest.raises(ValueError, match="reparam"):
        BetaVAE(N_GENES, LATENT, reparam="other")


def test_free_bits_penalty():
    rng = np.random.default_rng(1)
    t = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    mu, logvar = t(rng.normal(0, 0.3, (8, 4))), t(rng.normal(0, 0.3, (8, 4)))
    # no free bits: the plain KL term
    assert kl_penalty(mu, logvar, 10, 0.0).item() == pytest.approx(kl_term(mu, logvar, 10).item(), rel=1e-12)
    per_dim = 0.5 * (torch.exp(logvar) + mu ** 2 - 1 - logvar).mean(0)
    lam = float(per_dim.detach().median())
    expected = torch.clamp(per_dim, min=lam).sum() / 10
    assert kl_penalty(mu, logvar, 10, lam).item() == pytest.approx(expected.item(), rel=1e-12)
    # dimensions under the free bits get no KL gradient at all
    big = kl_penalty(mu, logvar, 10, 100.0)
    assert big.item() == pytest.approx(4 * 100.0 / 10)
    big.backward()
    assert float(mu.grad.abs().sum()) == 0.0
    x, x_hat = t(rng.random((8, 10))), t(rng.random((8, 10)))
    loss, recon, kl = vae_loss(x_hat, x, mu, logvar, beta=4.0, free_bits=100.0)
    assert kl.item() == pytest.approx(kl_term(mu, logvar, 10).item())  # reported KL is the true one
    assert loss.item() == pytest.approx(recon.item() + 4.0 * 40.0)
