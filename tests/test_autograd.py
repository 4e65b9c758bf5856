"""The autograd engine: graph walking, accumulation, no_grad, detach, retain_graph, dtypes."""
from __future__ import annotations

import sys

import numpy as np
import pytest

import minibnn
from minibnn import functional as F
from minibnn.autograd import Function, Tensor

from gradcheck import as64, gradcheck


def test_shared_subexpression_gets_both_contributions():
    a = np.array([0.5, -1.5, 2.0])
    x = as64(a)
    y = x * x + x  # x used three times
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * a + 1)


def test_diamond_graph():
    a = np.array([0.3, -0.7])
    x = as64(a)
    h = x * 2.0          # h feeds two branches that meet again
    y = (h * h + h.exp()).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * (2 * (2 * a)) + 2 * np.exp(2 * a))
    gradcheck(lambda t: (t * 2.0) * (t * 2.0) + (t * 2.0).exp(), [as64(a)])


def test_same_tensor_twice_in_one_op():
    x = as64([1.0, 2.0, 3.0])
    F.mul(x, x).sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0, 6.0])
    x.grad = None
    F.add(x, x).sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 2.0, 2.0])


def test_leaf_grad_accumulates_across_backward_calls():
    x = as64([1.0, -2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0 + 2.0, 3.0 - 4.0])


def test_leaf_grads_are_independent_arrays():
    """Two leaves fed the same upstream gradient must not share one array (in-place updates)."""
    x, y = as64([1.0, 2.0]), as64([3.0, 4.0])
    (x + y).sum().backward()
    assert x.grad is not y.grad
    x.grad *= 0
    np.testing.assert_array_equal(y.grad, [1.0, 1.0])
    z = as64(np.ones((2, 2)))
    seed = np.ones((2, 2))
    (z + 0.0).backward(seed)
    z.grad += 1
    np.testing.assert_array_equal(seed, np.ones((2, 2)))  # the caller's gradient array is not aliased


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    assert minibnn.is_grad_enabled()
    with minibnn.no_grad():
        assert not minibnn.is_grad_enabled()
        y = x * 2.0 + 1.0
        with minibnn.no_grad():
            pass
        assert not minibnn.is_grad_enabled()  # a nested block restores the outer state
    assert minibnn.is_grad_enabled()
    assert not y.requires_grad and y._ctx is None
    with pytest.raises(RuntimeError):
        y.sum().backward()


def test_no_grad_restores_state_after_exception():
    with pytest.raises(ZeroDivisionError):
        with minibnn.no_grad():
            1 / 0
    assert minibnn.is_grad_enabled()


def test_constants_do_not_require_grad():
    x = Tensor(np.ones(3))
    y = x * 2.0
    assert not y.requires_grad and y._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_detach_shares_data_and_cuts_graph():
    x = as64([1.0, 2.0])
    y = x * 3.0
    d = y.detach()
    assert not d.requires_grad and d._ctx is None
    assert d.data is y.data
    z = (d * x).sum()  # gradient flows only through x, with d treated as a constant
    z.backward()
    np.testing.assert_allclose(x.grad, [3.0, 6.0])


def test_backward_on_non_scalar_needs_a_gradient():
    x = as64(np.ones((2, 3)))
    y = x * 2.0
    with pytest.raises(RuntimeError, match=r"\(2, 3\)"):
        y.backward()
    y.backward(np.full((2, 3), 0.5))
    np.testing.assert_allclose(x.grad, np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        (x * 2.0).backward(np.ones(3))


def test_backward_with_tensor_gradient():
    x = as64(np.ones(2))
    (x * 2.0).backward(Tensor(np.array([1.0, -1.0]), dtype=np.float64))
    np.testing.assert_allclose(x.grad, [2.0, -2.0])


def test_second_backward_through_freed_graph_raises():
    x = as64([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_second_backward_through_freed_shared_subgraph_raises():
    x = as64([1.0, 2.0])
    h = x * x
    h.sum().backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        (h * 2.0).sum().backward()


def test_retain_graph_allows_second_backward():
    x = as64([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * 2 * np.array([1.0, 2.0]))


def test_python_scalars_keep_float32():
    x = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    assert x.dtype == np.float32
    results = [x + 1, 1 + x, x - 2.5, 2.5 - x, x * 3, 3.0 * x, x / 3, 3 / x, x ** 2, -x, x * np.float64(2.0),
               x + np.array([0.1, 0.2]), x.mean(), F.relu(x), F.softmax(x), x @ x]
    for r in results:
        assert r.dtype == np.float32, r
    sum(r.sum() for r in results).backward()
    assert x.grad.dtype == np.float32


def test_default_dtypes():
    assert Tensor([1, 2, 3]).dtype == np.float32
    assert Tensor(np.ones(2)).dtype == np.float32  # float64 arrays become float32 by default
    assert Tensor(2.5).dtype == np.float32
    assert Tensor(np.array([1, 2], dtype=np.int64)).dtype == np.int64  # labels keep their type
    assert Tensor(np.array([True])).dtype == np.bool_


def test_float64_preserved_when_asked():
    x = Tensor(np.array([0.1, 0.2]), requires_grad=True, dtype=np.float64)
    assert x.dtype == np.float64
    c = np.array([1e-9, 2e-9])  # a float64 constant keeps its precision next to a float64 tensor
    y = ((x * 2.0 + 1) / 3 - c).exp()
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.numpy(), np.exp((np.array([0.1, 0.2]) * 2 + 1) / 3 - c), rtol=1e-15)
    y.sum().backward()
    assert x.grad.dtype == np.float64


def test_deep_chain_does_not_recurse():
    depth = 5000
    assert sys.getrecursionlimit() < depth * 2
    x = as64([1.0, 2.0])
    y = x
    for _ in range(depth):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001 ** depth), rtol=1e-9)
    del y  # freeing the chain must not recurse either


def test_custom_function_wrong_gradient_shape_is_reported():
    class Bad(Function):
        def forward(self, a):
            return a * 2

        def backward(self, g):
            return g[:1]

    x = as64([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"Bad.*\(1,\).*\(2,\)"):
        Bad.apply(x).sum().backward()


def test_custom_function_and_constant_inputs():
    class Scale(Function):
        def forward(self, a, s):
            self.s = s
            return a * s

        def backward(self, g):
            return g * self.s, None

    x = as64([1.0, 2.0])
    y = Scale.apply(x, np.array([3.0, 4.0]))
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 4.0])


def test_only_leaves_that_require_grad_get_gradients():
    x = as64([1.0])
    c = as64([2.0], requires_grad=False)
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_allclose(x.grad, [2.0])


def test_intermediate_tensors_keep_no_grad():
    x = as64([1.0, 2.0])
    h = x * 2.0
    (h * h).sum().backward()
    assert h.grad is None  # like PyTorch: only leaves accumulate


def test_tensor_basics():
    t = Tensor(np.arange(6.0).reshape(2, 3))
    assert t.shape == (2, 3) and t.ndim == 2 and t.size == 6 and len(t) == 2
    assert isinstance(t.numpy(), np.ndarray)
    assert Tensor(np.array([4.0])).item() == 4.0
    assert "Tensor(" in repr(t) and "requires_grad=True" in repr(Tensor(1.0, requires_grad=True))


def test_ndarray_on_the_left_dispatches_to_tensor():
    x = as64([1.0, 2.0])
    y = np.array([3.0, 4.0]) * x
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 4.0])
