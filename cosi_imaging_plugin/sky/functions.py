"""astromodels spatial templates defined in Galactic coordinates.

astromodels calls spatial functions with (x, y) = (R.A., Dec.) in degrees
(ICRS) and expects a surface brightness in sr^-1. The templates here are
naturally written in Galactic longitude and latitude (l, b), so each call
rotates its arguments with the fixed ICRS -> Galactic matrix of
:func:`cosi_imaging_plugin.sky.rasterize.frame_rotation` (one 3x3 product, no
per-call SkyCoord transformation).

Both templates are products ``g(b) k(l)``. The sphere's measure
``dOmega = cos b db dl`` separates as well, so the integral over the sphere is
``[int g(b) cos b db] [int k(l) dl]`` and both factors have closed forms, which
normalise the templates to integrate to one over the sphere exactly (to
rounding). With ``dl`` the longitude offset wrapped into [-pi, pi) and all
angles in radians:

- longitude, a wrapped Gaussian:
  ``int_{-pi}^{pi} exp(-dl^2 / 2 s^2) dl = sqrt(2 pi) s erf(pi / (sqrt(2) s))``
  (-> ``sqrt(2 pi) s`` when s << pi);
- latitude, a two-sided exponential of scale height h about b0:
  ``int exp(-|b - b0| / h) cos b db
  = [2 h cos b0 + h^2 (exp(-(pi/2 - b0)/h) + exp(-(pi/2 + b0)/h))] / (1 + h^2)``
  (-> ``2 h cos b0 / (1 + h^2)`` when h << pi/2 - |b0|, the usual approximation);
- latitude, a Gaussian of width s about b0 (truncated at the poles):
  ``Re[exp(i b0) s sqrt(pi/2) exp(-s^2/2) (erf(z+) - erf(z-))]`` with
  ``z(+-) = (+-pi/2 - b0 - i s^2) / (sqrt(2) s)``
  (-> ``sqrt(2 pi) s exp(-s^2/2) cos b0`` when s << pi/2 - |b0|).

Importing this module registers the classes with astromodels (its
``FunctionMeta`` metaclass does it), so ``astromodels.get_function_class``
finds them by name.
"""
import math

import astropy.units as u
import numpy as np
from astromodels.functions.function import Function2D, FunctionMeta
from scipy.special import erf

from .rasterize import frame_rotation

__all__ = [
    "Galactic_disk",
    "Galactic_gaussian",
    "icrs_to_galactic",
    "wrapped_gaussian_integral",
    "exponential_latitude_integral",
    "gaussian_latitude_integral",
]


def icrs_to_galactic(ra, dec):
    """Galactic (l, b) in degrees of ICRS (R.A., Dec.) in degrees, by a fixed rotation.

    Parameters
    ----------
    ra, dec : array_like
        Degrees.

    Returns
    -------
    l, b : numpy.ndarray
        Degrees, ``l`` in [0, 360).
    """
    ra = np.radians(np.asarray(ra, dtype=np.float64))
    dec = np.radians(np.asarray(dec, dtype=np.float64))
    cos_dec = np.cos(dec)
    vec = np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)])
    gal = np.tensordot(frame_rotation("icrs", "galactic"), vec, axes=1)
    lon = np.degrees(np.arctan2(gal[1], gal[0])) % 360.0
    lat = np.degrees(np.arcsin(np.clip(gal[2], -1.0, 1.0)))
    return lon, lat


def wrapped_gaussian_integral(sigma):
    """``int_{-pi}^{pi} exp(-x^2 / (2 sigma^2)) dx`` for sigma in radians."""
    return math.sqrt(2.0 * math.pi) * sigma * math.erf(math.pi / (math.sqrt(2.0) * sigma))


def exponential_latitude_integral(b0, h):
    """``int_{-pi/2}^{pi/2} exp(-|b - b0| / h) cos b db`` (radians), in closed form.

    Parameters
    ----------
    b0 : float
        Latitude of the peak, radians, in [-pi/2, pi/2].
    h : float
        Scale height, radians, > 0.
    """
    tails = math.exp(-(0.5 * math.pi - b0) / h) + math.exp(-(0.5 * math.pi + b0) / h)
    return (2.0 * h * math.cos(b0) + h * h * tails) / (1.0 + h * h)


def gaussian_latitude_integral(b0, sigma):
    """``int_{-pi/2}^{pi/2} exp(-(b - b0)^2 / (2 sigma^2)) cos b db`` (radians), in closed form."""
    shift = 1j * sigma * sigma
    scale = math.sqrt(2.0) * sigma
    upper = erf((0.5 * math.pi - b0 - shift) / scale)
    lower = erf((-0.5 * math.pi - b0 - shift) / scale)
    value = np.exp(1j * b0) * sigma * math.sqrt(0.5 * math.pi) * math.exp(-0.5 * sigma * sigma) * (upper - lower)
    return float(np.real(value))


def _as_degrees(value):
    """Plain float array in degrees of a number, array or angle Quantity (dimensionless: degrees)."""
    if isinstance(value, u.Quantity) and value.unit != u.dimensionless_unscaled:
        return np.asarray(value.to_value(u.deg), dtype=np.float64)
    return np.asarray(getattr(value, "value", value), dtype=np.float64)


def _longitude_offset(lon, l0):
    """``lon - l0`` wrapped into [-180, 180) degrees."""
    return (lon - l0 + 180.0) % 360.0 - 180.0


def _with_unit(result, x):
    # astromodels' unit-aware call path converts the result to the function's z unit (sr^-1)
    return result / u.sr if isinstance(x, u.Quantity) else result


class _GalacticTemplate:
    """Shared astromodels plumbing of the Galactic templates (units, boundaries, integral)."""

    def _set_angle_units(self, x_unit):
        # every parameter is an angle in the unit of the coordinates (deg)
        for parameter in self.parameters.values():
            parameter.unit = x_unit

    def get_boundaries(self):
        """The whole sky: the templates have no hard edge ((R.A. range), (Dec. range))."""
        return (0.0, 360.0), (-90.0, 90.0)

    def get_total_spatial_integral(self, z=None):
        """Integral over the sphere: one (the templates are normalised)."""
        if isinstance(z, u.Quantity):
            z = z.value
        return np.ones_like(z, dtype=float)


class Galactic_disk(_GalacticTemplate, Function2D, metaclass=FunctionMeta):
    r"""
    description :

        A Galactic disk, exponential in Galactic latitude with scale height h about b0 and a
        Gaussian in Galactic longitude about l0, normalised to integrate to one over the sphere
        (closed-form normalisation, see cosi_imaging_plugin.sky.functions). Called with ICRS
        (R.A., Dec.) in degrees and returns sr^-1.

    latex : $ \frac{1}{N_b N_l} \exp\left(-\frac{|b-b_0|}{h}\right) \exp\left(-\frac{(l-l_0)^2}{2\sigma_l^2}\right) $

    parameters :

        l0 :

            desc : Galactic longitude of the centre (deg)
            initial value : 0.0
            min : -360.0
            max : 360.0
            fix : yes

        b0 :

            desc : Galactic latitude of the mid-plane (deg)
            initial value : 0.0
            min : -90.0
            max : 90.0
            fix : yes

        sigma_l :

            desc : Gaussian width in Galactic longitude (deg)
            initial value : 30.0
            min : 0.01
            max : 10000.0

        scale_height :

            desc : Exponential scale height in Galactic latitude (deg)
            initial value : 3.0
            min : 0.01
            max : 90.0

    """

    def _set_units(self, x_unit, y_unit, z_unit):
        self._set_angle_units(x_unit)

    def evaluate(self, x, y, l0, b0, sigma_l, scale_height):
        lon, lat = icrs_to_galactic(_as_degrees(x), _as_degrees(y))
        l0, b0, sigma_l, h = (float(_as_degrees(v)) for v in (l0, b0, sigma_l, scale_height))
        dl = np.radians(_longitude_offset(lon, l0))
        db = np.radians(np.abs(lat - b0))
        s, h_rad = math.radians(sigma_l), math.radians(h)
        norm = wrapped_gaussian_integral(s) * exponential_latitude_integral(math.radians(b0), h_rad)
        value = np.exp(-db / h_rad - 0.5 * (dl / s) ** 2) / norm
        return _with_unit(value, x)


class Galactic_gaussian(_GalacticTemplate, Function2D, metaclass=FunctionMeta):
    r"""
    description :

        A two-dimensional Gaussian in Galactic coordinates (l, b) about (l0, b0) with widths
        sigma_l and sigma_b (the longitude offset wrapped into [-180, 180) deg), normalised to
        integrate to one over the sphere (closed-form normalisation, see
        cosi_imaging_plugin.sky.functions). Called with ICRS (R.A., Dec.) in degrees and returns sr^-1.

    latex : $ \frac{1}{N_b N_l} \exp\left(-\frac{(l-l_0)^2}{2\sigma_l^2}-\frac{(b-b_0)^2}{2\sigma_b^2}\right) $

    parameters :

        l0 :

            desc : Galactic longitude of the centre (deg)
            initial value : 0.0
            min : -360.0
            max : 360.0
            fix : yes

        b0 :

            desc : Galactic latitude of the centre (deg)
            initial value : 0.0
            min : -90.0
            max : 90.0
            fix : yes

        sigma_l :

            desc : Gaussian width in Galactic longitude (deg)
            initial value : 10.0
            min : 0.01
            max : 10000.0

        sigma_b :

            desc : Gaussian width in Galactic latitude (deg)
            initial value : 5.0
            min : 0.01
            max : 90.0

    """

    def _set_units(self, x_unit, y_unit, z_unit):
        self._set_angle_units(x_unit)

    def evaluate(self, x, y, l0, b0, sigma_l, sigma_b):
        lon, lat = icrs_to_galactic(_as_degrees(x), _as_degrees(y))
        l0, b0, sigma_l, sigma_b = (float(_as_degrees(v)) for v in (l0, b0, sigma_l, sigma_b))
        dl = np.radians(_longitude_offset(lon, l0))
        db = np.radians(lat - b0)
        s_l, s_b = math.radians(sigma_l), math.radians(sigma_b)
        norm = wrapped_gaussian_integral(s_l) * gaussian_latitude_integral(math.radians(b0), s_b)
        value = np.exp(-0.5 * (dl / s_l) ** 2 - 0.5 * (db / s_b) ** 2) / norm
        return _with_unit(value, x)
