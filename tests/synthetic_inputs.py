"""Small synthetic inputs shared by several test modules: an orbit and random attitudes."""
import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

from cosi_imaging_plugin.exposure import Orientation
from cosi_imaging_plugin.geometry import vec_to_lonlat


def circular_orbit(n=120, step=30.0, t0=1.83e9, altitude=550.0, inclination=0.4, livetime_fraction=0.9):
    """Zenith-pointing circular orbit (period 95 min), x axis along the velocity."""
    t = t0 + step * np.arange(n)
    phase = 2 * np.pi * (t - t[0]) / 5700.0
    zenith = np.stack([np.cos(phase), np.sin(phase) * np.cos(inclination), np.sin(phase) * np.sin(inclination)], -1)
    normal = np.array([0.0, -np.sin(inclination), np.cos(inclination)])
    x = np.cross(normal, zenith)

    def sky(v):
        lon, lat = vec_to_lonlat(v)
        return SkyCoord(l=lon * u.deg, b=lat * u.deg, frame="galactic")

    return Orientation(t, sky(x), sky(zenith), altitude=np.full(n, altitude) * u.km, earth_zenith=sky(zenith),
                       livetime=np.full(n, livetime_fraction * step) * u.s)


def random_attitudes(rng, n):
    """Random proper rotations (columns: Galactic x, y, z of the spacecraft)."""
    out = []
    for _ in range(n):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0:
            q[:, 0] *= -1
        out.append(q)
    return np.array(out)
