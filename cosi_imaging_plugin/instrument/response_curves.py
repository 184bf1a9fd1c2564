"""Response curves of the synthetic COSI-like instrument (``docs/instrument.md``).

The physics that the parameters of an
:class:`~cosi_imaging_plugin.instrument.config.InstrumentConfig` define: on-axis
effective area and its off-axis falloff, energy resolution and photopeak
fraction, the ARM profile (Gaussian core plus tail), absorption of the scattered
photon, the electron-threshold Compton angle and the energy-dispersion matrix of
the configured binning. They live in the mixin :class:`ResponseCurves`, which
``InstrumentConfig`` inherits, so ``config.on_axis_area(e)`` and the like are
methods of the configuration.
"""
import itertools
import math

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr

from ..errors import CosiInputError
from . import kinematics

__all__ = ["GAUSS_FWHM", "ResponseCurves"]

#: FWHM of a unit normal distribution, 2 sqrt(2 ln 2).
GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Gauss-Legendre nodes for averages over an Ei bin; the integrands (power laws,
# error functions a few FWHM wide) are smooth on the bin, so 16 nodes are plenty.
_N_ENERGY_NODES = 16


class ResponseCurves:
    """Curves evaluated from the instrument parameters (mixin of ``InstrumentConfig``).

    All energies are in keV and angles in radians unless the name says deg. The
    class holds no state: it reads the sections ``effective_area``,
    ``energy_dispersion``, ``arm``, ``absorption`` and ``binning`` and the value
    ``electron_threshold_kev`` of the configuration it is mixed into.
    """

    # ------------------------------------------------------------ binning
    @property
    def phi_edges(self):
        """numpy.ndarray: Phi edges in radians."""
        return np.radians(self.binning.phi_edges_deg)

    @property
    def ei_edges(self):
        """numpy.ndarray: Ei edges in keV."""
        return np.asarray(self.binning.ei_edges_kev)

    @property
    def em_edges(self):
        """numpy.ndarray: Em edges in keV."""
        return np.asarray(self.binning.em_edges_kev)

    @property
    def nside(self):
        """int: HEALPix NSIDE of NuLambda and PsiChi."""
        return self.binning.nside

    # ------------------------------------------------------ effective area
    def on_axis_area(self, energy):
        """On-axis effective area in cm2, power-law interpolation of the table.

        Parameters
        ----------
        energy : array_like
            Energy in keV, inside the table's range.

        Returns
        -------
        numpy.ndarray

        Raises
        ------
        CosiInputError
            If an energy lies outside ``effective_area.energy_kev``.
        """
        energy = np.asarray(energy, dtype=float)
        table_e = np.asarray(self.effective_area.energy_kev)
        if np.any((energy < table_e[0]) | (energy > table_e[-1])) or np.any(np.isnan(energy)):
            raise CosiInputError(
                f"energy outside the effective-area table 'effective_area.energy_kev' "
                f"[{table_e[0]}, {table_e[-1]}] keV"
            )
        log_area = np.interp(np.log(energy), np.log(table_e), np.log(self.effective_area.on_axis_cm2))
        return np.exp(log_area)

    def mean_on_axis_area(self, lo, hi):
        """On-axis effective area averaged (flat in energy) over [lo, hi], exactly.

        The table is a power law between nodes, so each piece integrates in
        closed form.

        Parameters
        ----------
        lo, hi : float
            Bin limits in keV, inside the table, lo < hi.

        Returns
        -------
        float
            (1 / (hi - lo)) integral of A_on(E) dE, in cm2.
        """
        table_e = np.asarray(self.effective_area.energy_kev)
        self.on_axis_area([lo, hi])  # range check
        nodes = np.concatenate([[lo], table_e[(table_e > lo) & (table_e < hi)], [hi]])
        total = 0.0
        for a, b in itertools.pairwise(nodes):
            area_a, area_b = self.on_axis_area([a, b])
            slope = math.log(area_b / area_a) / math.log(b / a)
            if abs(slope + 1.0) < 1e-12:
                total += area_a * a * math.log(b / a)
            else:
                total += area_a * a / (slope + 1.0) * ((b / a) ** (slope + 1.0) - 1.0)
        return total / (hi - lo)

    def off_axis_factor(self, theta):
        """Off-axis falloff [(1 + cos theta) / 2]^gamma, zero beyond the horizon.

        Parameters
        ----------
        theta : array_like
            Angle from the spacecraft +z axis in radians.

        Returns
        -------
        numpy.ndarray
        """
        theta = np.asarray(theta, dtype=float)
        factor = (0.5 * (1.0 + np.cos(theta))) ** self.effective_area.off_axis_index
        return np.where(theta <= math.radians(self.effective_area.max_off_axis_deg), factor, 0.0)

    # ---------------------------------------------------- energy response
    def energy_fwhm(self, energy):
        """Energy resolution FWHM(E) = sqrt(a^2 + b E) in keV.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        numpy.ndarray
        """
        ed = self.energy_dispersion
        return np.sqrt(ed.fwhm_a_kev**2 + ed.fwhm_b_kev * np.asarray(energy, dtype=float))

    def photopeak_fraction(self, energy):
        """Fraction of the events depositing the full energy, linear in log E.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        numpy.ndarray
        """
        ed = self.energy_dispersion
        return np.interp(np.log(np.asarray(energy, dtype=float)), np.log(ed.photopeak_energy_kev),
                         ed.photopeak_fraction)

    # ---------------------------------------------------------------- ARM
    def arm_fwhm(self, energy):
        """FWHM of the whole ARM profile in radians at ``energy`` keV.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        numpy.ndarray
        """
        arm = self.arm
        ratio = np.asarray(energy, dtype=float) / arm.reference_energy_kev
        return np.radians(arm.fwhm_deg) * ratio**arm.energy_index

    def arm_sigmas(self, energy):
        """Standard deviations of the ARM core and tail Gaussians in radians.

        The core width is chosen so that the FWHM of the mixture
        (1 - f) N(0, s) + f N(0, k s) equals :meth:`arm_fwhm`.

        Parameters
        ----------
        energy : array_like
            keV.

        Returns
        -------
        sigma_core, sigma_tail : numpy.ndarray
        """
        fwhm_over_sigma = _mixture_fwhm_over_core_sigma(self.arm.tail_fraction, self.arm.tail_width_factor)
        core = self.arm_fwhm(energy) / fwhm_over_sigma
        return core, core * self.arm.tail_width_factor

    # --------------------------------------------------------- absorption
    def attenuation(self, energy):
        """Attenuation coefficient of the detector for the scattered photon, in cm-1.

        Parameters
        ----------
        energy : array_like
            Scattered-photon energy E2 in keV.

        Returns
        -------
        numpy.ndarray
        """
        ab = self.absorption
        return ab.attenuation_per_cm * (np.asarray(energy, dtype=float) / ab.reference_energy_kev) ** (
            -ab.energy_index
        )

    def path_length(self, down_cosine):
        """Mean path through the detector for a scattered photon, in cm.

        Parameters
        ----------
        down_cosine : array_like
            Cosine between the escape direction and -z (1: straight down into
            the stack, 0: horizontal, -1: straight up).

        Returns
        -------
        numpy.ndarray
        """
        ab = self.absorption
        t = 0.5 * (1.0 + np.asarray(down_cosine, dtype=float))
        return ab.path_up_cm + (ab.path_down_cm - ab.path_up_cm) * t

    def absorption_efficiency(self, scattered_energy, down_cosine):
        """Chance that the scattered photon is absorbed, 1 - exp(-mu(E2) L(direction)).

        Parameters
        ----------
        scattered_energy : array_like
            E2 in keV.
        down_cosine : array_like
            See :meth:`path_length`. Broadcasts against ``scattered_energy``.

        Returns
        -------
        numpy.ndarray
        """
        return -np.expm1(-self.attenuation(scattered_energy) * self.path_length(down_cosine))

    # ---------------------------------------------------------- threshold
    def minimum_compton_angle(self, energy):
        """Smallest scatter angle whose electron passes the threshold, in radians.

        Parameters
        ----------
        energy : array_like
            Incident energy in keV.

        Returns
        -------
        numpy.ndarray
            NaN where no angle gives the electron enough energy.
        """
        return kinematics.compton_angle(energy, self.electron_threshold_kev)

    # ------------------------------------------------- energy dispersion
    def energy_dispersion_matrix(self):
        """P(Em bin | Ei bin) for the configured binning, each row summing to 1.

        For E inside an Ei bin (averaged with weight A_on(E), Gauss-Legendre on
        the smooth pieces between table nodes and continuum edges),
        a photopeak fraction f(E) is spread as a Gaussian of FWHM(E) around E
        and the rest uniformly over [c E, E]. Each row is then normalised over
        the Em bins: the configured effective area is the area of the events
        selected by the Em binning.

        Returns
        -------
        numpy.ndarray
            Shape (n_Ei, n_Em).
        """
        return self._dispersion(normalise=True)

    def _dispersion(self, normalise):
        """P(Em bin | Ei bin); without `normalise`, rows hold the fraction the Em bins catch."""
        ei, em = self.ei_edges, self.em_edges
        x, wq = np.polynomial.legendre.leggauss(_N_ENERGY_NODES)
        out = np.empty((ei.size - 1, em.size - 1))
        c = self.energy_dispersion.continuum_min_fraction
        # The tables have kinks at their nodes and the continuum at c E = Em edges:
        # integrate piece by piece between them so every piece is smooth.
        kinks = np.concatenate([self.effective_area.energy_kev, self.energy_dispersion.photopeak_energy_kev,
                                em, em / c if c > 0 else []])
        for i, (lo, hi) in enumerate(itertools.pairwise(ei)):
            pieces = np.unique(np.concatenate([[lo, hi], kinks[(kinks > lo) & (kinks < hi)]]))
            half = 0.5 * np.diff(pieces)[:, None]
            energy = (half * x[None, :] + 0.5 * (pieces[1:] + pieces[:-1])[:, None]).ravel()
            weight = (half * wq[None, :]).ravel() * self.on_axis_area(energy)
            sigma = self.energy_fwhm(energy)[:, None] / GAUSS_FWHM
            peak = ndtr((em[None, 1:] - energy[:, None]) / sigma) - ndtr((em[None, :-1] - energy[:, None]) / sigma)
            c_lo = c * energy[:, None]
            overlap = np.clip(np.minimum(em[None, 1:], energy[:, None]) - np.maximum(em[None, :-1], c_lo), 0, None)
            cont = overlap / (energy[:, None] - c_lo)
            frac = self.photopeak_fraction(energy)[:, None]
            out[i] = weight @ (frac * peak + (1.0 - frac) * cont) / weight.sum()
        if normalise:
            out /= out.sum(axis=1, keepdims=True)
        return out


def _mixture_fwhm_over_core_sigma(tail_fraction, width_factor):
    """FWHM / sigma_core of (1 - f) N(0, 1) + f N(0, k): the mixture is scale-free."""
    if tail_fraction == 0.0 or width_factor == 1.0:
        return GAUSS_FWHM
    f, k = tail_fraction, width_factor

    def density(x):
        return (1.0 - f) * np.exp(-0.5 * x * x) + (f / k) * np.exp(-0.5 * (x / k) ** 2)

    half = 0.5 * density(0.0)
    # The density falls monotonically for x > 0 and is below half at x = k * GAUSS_FWHM.
    return 2.0 * brentq(lambda x: density(x) - half, 0.0, k * GAUSS_FWHM, xtol=1e-14, rtol=1e-14)
