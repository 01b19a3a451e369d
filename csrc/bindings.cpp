// pybind11 module fastalign._C: validates numpy inputs (clear ValueErrors), reads them in place when
// C-contiguous, and runs the selection with the GIL released so other Python threads keep going.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <stdexcept>
#include <string>

#include "selection.h"

namespace py = pybind11;

namespace {

std::string shape_of(const py::array& a) {
  std::ostringstream s;
  s << '[';
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << ']';
  return s.str();
}

py::array as_array(const py::handle& obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw std::invalid_argument(std::string(name) + " must be a numpy array, got " +
                                std::string(py::str(py::type::of(obj).attr("__name__"))));
  return py::reinterpret_borrow<py::array>(obj);
}

py::array_t<float, py::array::c_style> checked_rewards(const py::handle& obj) {
  py::array a = as_array(obj, "rewards");
  if (a.ndim() != 3)
    throw std::invalid_argument("rewards must have shape [B, N, E] (prompts, responses, heads), got " +
                                shape_of(a));
  if (!a.dtype().is(py::dtype::of<float>()))
    throw std::invalid_argument("rewards must be float32, got " + std::string(py::str(a.dtype())) +
                                "; convert with .astype(np.float32)");
  if (a.shape(1) < 2)
    throw std::invalid_argument("need at least 2 responses per prompt to form a pair, got N=" +
                                std::to_string(a.shape(1)));
  if (a.shape(2) < 1)
    throw std::invalid_argument("need at least one ensemble head, got E=0");
  // Same dtype already, so this only copies when the layout is not C-contiguous.
  if (a.flags() & py::array::c_style) return py::reinterpret_borrow<py::array_t<float, py::array::c_style>>(a);
  return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
}

py::array_t<int64_t, py::array::c_style> checked_ids(const py::handle& obj, py::ssize_t B,
                                                     py::ssize_t N) {
  py::array a = as_array(obj, "ids");
  if (a.ndim() != 2 || a.shape(0) != B || a.shape(1) != N)
    throw std::invalid_argument("ids must have shape [B, N] = [" + std::to_string(B) + ", " +
                                std::to_string(N) + "] like rewards, got " + shape_of(a));
  if (!a.dtype().is(py::dtype::of<int64_t>()))
    throw std::invalid_argument("ids must be int64, got " + std::string(py::str(a.dtype())) +
                                "; convert with .astype(np.int64)");
  if (a.flags() & py::array::c_style) return py::reinterpret_borrow<py::array_t<int64_t, py::array::c_style>>(a);
  return py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
}

uint64_t checked_seed(const py::handle& seed) {
  if (!PyLong_Check(seed.ptr()) || PyBool_Check(seed.ptr()))
    throw std::invalid_argument("seed must be an int, got " +
                                std::string(py::str(py::type::of(seed).attr("__name__"))));
  // One C call instead of Python-level comparisons: fails (OverflowError) below 0 or past 2**64 - 1.
  const unsigned long long value = PyLong_AsUnsignedLongLong(seed.ptr());
  if (value == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw std::invalid_argument("seed must be in [0, 2**64), got " + std::string(py::str(seed)));
  }
  return value;
}

py::tuple select_pairs(const py::handle& rewards_obj, const py::handle& ids_obj,
                       const std::string& strategy_name, const py::handle& seed_obj) {
  const fastalign::Strategy strategy = fastalign::parse_strategy(strategy_name);
  const uint64_t seed = checked_seed(seed_obj);
  const auto rewards = checked_rewards(rewards_obj);
  const py::ssize_t B = rewards.shape(0), N = rewards.shape(1), E = rewards.shape(2);
  py::array_t<int64_t, py::array::c_style> ids;
  const bool has_ids = !ids_obj.is_none();
  if (has_ids) ids = checked_ids(ids_obj, B, N);

  py::array_t<int64_t> pairs({B, py::ssize_t(2)}), heads({B, py::ssize_t(2)});
  py::array_t<double> scores(B);
  const float* r = rewards.data();
  const int64_t* id = has_ids ? ids.data() : nullptr;
  int64_t* p = pairs.mutable_data();
  int64_t* h = heads.mutable_data();
  double* s = scores.mutable_data();
  {
    py::gil_scoped_release release;
    fastalign::select_pairs(r, id, B, N, E, strategy, seed, p, h, s);
  }
  return py::make_tuple(pairs, heads, scores);
}

py::array_t<uint64_t> rng_draws(const py::handle& seed, uint64_t row, py::ssize_t count) {
  if (count < 0) throw std::invalid_argument("count must be >= 0, got " + std::to_string(count));
  fastalign::RowRng rng(checked_seed(seed), row);
  py::array_t<uint64_t> out(count);
  uint64_t* o = out.mutable_data();
  for (py::ssize_t i = 0; i < count; ++i) o[i] = rng.next();
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastalign C++ extension: pair selection for active exploration (see csrc/selection.h)";
  m.attr("STRATEGIES") = py::tuple(py::cast(fastalign::strategy_names()));
  m.attr("AVX2") = fastalign::avx2_paths();
  m.def("select_pairs", &select_pairs, py::arg("rewards"), py::arg("ids"), py::arg("strategy"),
        py::arg("seed"),
        "Pick one pair per prompt from rewards [B, N, E] float32 and optional ids [B, N] int64.\n"
        "Returns (pairs [B, 2] int64, heads [B, 2] int64, scores [B] float64); rows with fewer than\n"
        "2 distinct responses get (-1, -1), (-1, -1), NaN.");
  m.def("rng_draws", &rng_draws, py::arg("seed"), py::arg("row"), py::arg("count"),
        "The first `count` words of the SplitMix64 stream keyed by (seed, row), for parity tests.");
}
