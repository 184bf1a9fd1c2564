"""Compton scattering kinematics and the Klein-Nishina cross section.

Small vectorised numpy functions of the incident energy ``E0`` (keV) and the
Compton scatter angle ``phi`` (radians). They broadcast against each other like
any numpy ufunc.
"""
import numpy as np

#: Electron rest energy m_e c^2 in keV.
ELECTRON_MASS_KEV = 510.99895
#: Classical electron radius r_e in cm.
CLASSICAL_ELECTRON_RADIUS_CM = 2.8179403262e-13


def scattered_energy(energy, phi):
    """Energy of the Compton-scattered photon.

    Parameters
    ----------
    energy : array_like
        Incident photon energy E0 in keV.
    phi : array_like
        Compton scatter angle in radians.

    Returns
    -------
    numpy.ndarray
        E2 = E0 / (1 + (E0 / m_e c^2)(1 - cos phi)) in keV.
    """
    energy = np.asarray(energy, dtype=float)
    return energy / (1.0 + (energy / ELECTRON_MASS_KEV) * (1.0 - np.cos(phi)))


def electron_energy(energy, phi):
    """Kinetic energy given to the recoil electron, E1 = E0 - E2.

    Parameters
    ----------
    energy : array_like
        Incident photon energy E0 in keV.
    phi : array_like
        Compton scatter angle in radians.

    Returns
    -------
    numpy.ndarray
        E1 in keV.
    """
    energy = np.asarray(energy, dtype=float)
    # Written without the subtraction E0 - E2 so that small E1 keeps full precision.
    x = (energy / ELECTRON_MASS_KEV) * (1.0 - np.cos(phi))
    return energy * x / (1.0 + x)


def compton_angle(energy, electron_kev):
    """Compton scatter angle for an incident energy and an electron energy.

    The inverse of :func:`electron_energy`: cos phi = 1 - m_e c^2 (1/E2 - 1/E0)
    with E2 = E0 - E1.

    Parameters
    ----------
    energy : array_like
        Incident photon energy E0 in keV.
    electron_kev : array_like
        Electron energy E1 in keV, 0 <= E1 < E0.

    Returns
    -------
    numpy.ndarray
        phi in radians; NaN where no scatter angle gives that electron energy
        (E1 above the Compton edge).
    """
    energy = np.asarray(energy, dtype=float)
    e2 = energy - np.asarray(electron_kev, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos_phi = 1.0 - ELECTRON_MASS_KEV * (1.0 / e2 - 1.0 / energy)
        return np.where((cos_phi >= -1.0) & (cos_phi <= 1.0), np.arccos(np.clip(cos_phi, -1, 1)), np.nan)


def klein_nishina_dsigma_domega(energy, phi):
    """Klein-Nishina differential cross section per unit solid angle.

    Parameters
    ----------
    energy : array_like
        Incident photon energy E0 in keV.
    phi : array_like
        Compton scatter angle in radians.

    Returns
    -------
    numpy.ndarray
        dsigma/dOmega = (r_e^2 / 2) P^2 (P + 1/P - sin^2 phi) in cm2 sr-1, with
        P = E2 / E0 the fraction of the energy kept by the photon.
    """
    energy = np.asarray(energy, dtype=float)
    p = 1.0 / (1.0 + (energy / ELECTRON_MASS_KEV) * (1.0 - np.cos(phi)))
    return 0.5 * CLASSICAL_ELECTRON_RADIUS_CM**2 * p**2 * (p + 1.0 / p - np.sin(phi) ** 2)


def klein_nishina_dsigma_dphi(energy, phi):
    """Klein-Nishina cross section per unit scatter angle.

    Parameters
    ----------
    energy : array_like
        Incident photon energy E0 in keV.
    phi : array_like
        Compton scatter angle in radians.

    Returns
    -------
    numpy.ndarray
        dsigma/dphi = 2 pi sin(phi) dsigma/dOmega in cm2 rad-1.
    """
    return 2.0 * np.pi * np.sin(phi) * klein_nishina_dsigma_domega(energy, phi)
