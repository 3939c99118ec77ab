"""DN-B's prepared inference (dn_mmdet/norm/prepared_inference.py): a
forward in eval reuses the kernel call the previous one chose, without
choosing again, and chooses again as soon as anything that choice depended
on has changed. Every case checks the output against the reference."""
import pytest
import torch
import torch.nn as nn

from dn_helpers import randomize, reference_output

from dn_mmdet.norm import DynamicNorm2d


def prepared_layer(channels=16, activation=True):
    dn = randomize(DynamicNorm2d(channels, r=4, g='oup'))
    if activation:
        dn.fuse_activation(nn.ReLU6())
    return dn.eval()


def run(dn, x):
    with torch.no_grad():
        return dn(x)


def test_second_forward_reuses_the_kernel_call(counted_kernel, chosen_paths):
    dn = prepared_layer()
    x = torch.randn(2, 16, 5, 5) * 4
    first = run(dn, x)
    assert chosen_paths == ['dn_b_kernel']
    assert dn._prepared is not None
    second = run(dn, x)
    other = run(dn, torch.randn(3, 16, 2, 7))
    assert chosen_paths == ['dn_b_kernel'], 'the prepared call was not reused'
    assert counted_kernel.dn_b_calls == 3
    torch.testing.assert_close(first, reference_output(dn, x))
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert other.shape == (3, 16, 2, 7)
    # The fused clamp's tag is set as on the first forward: the
    # pass-through after the layer leaves the output alone.
    assert second._dn_clamped == ((0.0, 6.0), second._version)


def change_in_place(dn):
    with torch.no_grad():
        dn.sc.fc2.weight.mul_(-1.5)
        dn.bn.running_var.mul_(2)


def reassign_weight(dn):
    dn.sc.fc1.weight = nn.Parameter(dn.sc.fc1.weight.detach() * 2)


def load_with_assign(dn):
    state = {k: v.clone() * (1.5 if k.endswith('weight') else 1)
             for k, v in dn.state_dict().items()}
    dn.load_state_dict(state, assign=True)


def replace_sigmoid(dn):
    dn.sc.act = nn.Hardsigmoid()


def add_hook(dn):
    dn.sc.fc1.register_forward_hook(lambda *args: None)


def to_double(dn):
    dn.double()


def stats_child_to_train(dn):
    dn.bn.train()  # as a backbone's norm_eval logic would


def change_eps(dn):
    dn.bn.eps = 0.5


def remove_activation(dn):
    dn.activation = None


# Changes to the layer after a forward in eval, the path the next forward
# must choose, and whether the input then is double.
CHANGES = {
    'weights changed in place': (change_in_place, None),
    'a weight reassigned': (reassign_weight, 'dn_b_kernel'),
    'state dict loaded with assign': (load_with_assign, 'dn_b_kernel'),
    'SC activation replaced': (replace_sigmoid, 'kernel'),
    'forward hook on FC1': (add_hook, 'kernel'),
    'converted to double': (to_double, 'dn_b_kernel'),
    'statistics child in training': (stats_child_to_train, 'kernel'),
    'eps changed': (change_eps, 'dn_b_kernel'),
    'fused activation removed': (remove_activation, 'dn_b_kernel'),
}


@pytest.mark.parametrize('change', list(CHANGES))
def test_changes_after_a_forward_are_seen(change, chosen_paths):
    """The next forward computes what a fresh choice computes: from the
    layer's new tensors, with its new parts, hooks, mode and dtype (a
    change in place needs no new choice: the call reads the same
    tensors)."""
    apply_change, next_path = CHANGES[change]
    dn = prepared_layer()
    x = torch.randn(2, 16, 4, 6) * 3
    run(dn, x)
    apply_change(dn)
    if change == 'converted to double':
        x = x.double()
    y = run(dn, x)
    expected = ['dn_b_kernel'] + ([next_path] if next_path else [])
    assert chosen_paths == expected
    torch.testing.assert_close(y, reference_output(dn, x))


@pytest.mark.parametrize('condition', [
    'autograd', 'fused off', 'other channels', 'empty',
    'channels last'])
def test_each_forward_checks_its_input_and_mode(condition, chosen_paths,
                                                monkeypatch):
    """What a forward's input or the process's mode decides is checked on
    every call: such a forward chooses its own path (and gets the error
    that names the layer, for a wrong input)."""
    dn = prepared_layer()
    run(dn, torch.randn(2, 16, 4, 4))
    x = torch.randn(2, 16, 5, 3)
    if condition == 'autograd':
        y = dn(x)  # eval with autograd: the weights' gradients flow
        assert chosen_paths[-1] == 'torch' and y.requires_grad
    elif condition == 'fused off':
        monkeypatch.setenv('DN_MMDET_FUSED', '0')
        y = run(dn, x)
        assert chosen_paths[-1] == 'torch'
    elif condition == 'other channels':
        with pytest.raises(ValueError, match='expected 16 input channels'):
            run(dn, torch.randn(2, 8, 4, 4))
        return
    elif condition == 'empty':
        y = run(dn, torch.randn(0, 16, 4, 4))
        assert chosen_paths[-1] == 'empty' and y.shape == (0, 16, 4, 4)
        return
    else:
        x = x.contiguous(memory_format=torch.channels_last)
        y = run(dn, x)
        assert chosen_paths[-1] == 'torch'
    assert len(chosen_paths) >= 2
    torch.testing.assert_close(y.detach(), reference_output(dn, x))


def test_tracing_sees_the_plain_ops(chosen_paths):
    dn = prepared_layer()
    x = torch.randn(2, 16, 4, 4)
    run(dn, x)
    with torch.no_grad():
        traced = torch.jit.trace(dn, x, check_trace=False)
    assert chosen_paths[-1] == 'torch'
    graph = str(traced.graph)
    assert 'aten::' in graph and 'dn_b_inference' not in graph
    torch.testing.assert_close(traced(x), reference_output(dn, x))


def test_training_forward_does_not_prepare(chosen_paths):
    dn = prepared_layer().train()
    dn(torch.randn(4, 16, 3, 3, requires_grad=True))
    assert chosen_paths == ['train_kernel']
    assert dn._prepared is None


def test_fused_switch_is_read_on_every_forward(chosen_paths, monkeypatch):
    dn = prepared_layer()
    x = torch.randn(2, 16, 3, 3)
    expected = reference_output(dn, x)
    for value, path in (('0', 'torch'), ('1', 'dn_b_kernel'), (None,
                                                               'dn_b_kernel')):
        run(dn, x)  # prepares (or not, with the switch off)
        if value is None:
            monkeypatch.delenv('DN_MMDET_FUSED')
        else:
            monkeypatch.setenv('DN_MMDET_FUSED', value)
        torch.testing.assert_close(run(dn, x), expected)
        assert chosen_paths[-1] == path, value


def test_copies_prepare_their_own(chosen_paths):
    """A deep copy or a pickle of a prepared layer holds no prepared call
    (which would read the original's tensors); its first forward prepares
    one from its own."""
    import copy
    import pickle
    dn = prepared_layer()
    x = torch.randn(2, 16, 3, 3)
    run(dn, x)
    for twin in (copy.deepcopy(dn), pickle.loads(pickle.dumps(dn))):
        assert twin._prepared is None
        with torch.no_grad():
            twin.sc.fc2.weight.mul_(3)  # the original keeps its weights
        y = run(twin, x)
        assert twin._prepared is not None
        torch.testing.assert_close(y, reference_output(twin, x))
    torch.testing.assert_close(run(dn, x), reference_output(dn, x))
    assert chosen_paths == ['dn_b_kernel'] * 3


def test_which_assignments_make_it_choose_again(chosen_paths):
    """A parameter, buffer or module assigned to any DN layer's parts in the
    process (here: another layer built) counts, and the next forward
    chooses again, with the same result; other modules' do not."""
    dn = prepared_layer()
    x = torch.randn(2, 16, 3, 3)
    first = run(dn, x)
    nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU())
    run(dn, x)
    assert chosen_paths == ['dn_b_kernel']
    DynamicNorm2d(4)
    assert torch.equal(run(dn, x), first)
    assert chosen_paths == ['dn_b_kernel'] * 2
