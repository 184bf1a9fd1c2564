"""A COSI-like orbit and attitude: low-Earth orbit, zenith pointing or north/south rocking.

The spacecraft z axis points at the zenith, tilted by the rocking angle towards
the orbit normal (north) or away from it (south), alternating every
``rocking_period / 2``; the x axis follows the orbital velocity, which is
perpendicular to both the zenith and the orbit normal. The orbit plane may be
inclined and precess (nodal regression), which spreads the attitudes over more
ScAtt bins. Geographic longitude follows from the Earth's rotation, used for an
optional South Atlantic Anomaly (SAA) gap in which the livetime is zero.
"""
import logging
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import ICRS, SkyCoord

from ..errors import CosiInputError
from ..exposure.orientation import Orientation

logger = logging.getLogger(__name__)

# WGS84 equatorial radius, for the orbit's radius and period. The occultation limb uses the COSI
# team's 6378 km (cosi_imaging_plugin.geometry.EARTH_RADIUS_KM); merging them would change simulated data.
EARTH_RADIUS_KM = 6378.137
EARTH_GM_KM3_S2 = 398600.4418
SIDEREAL_DAY_S = 86164.0905


@dataclass
class OrbitConfig:
    """Parameters of the simulated orbit and attitude.

    Parameters
    ----------
    duration_s : float
        Length of the observation.
    cadence_s : float
        Spacing of the attitude samples (one .ori row each).
    altitude_km : float
        Circular-orbit altitude.
    inclination_deg : float
        Orbit inclination to the celestial equator (0 = equatorial).
    precession_period_days : float
        Period of the nodal regression of an inclined orbit (0 = none).
    rocking_deg : float
        Tilt of the z axis from the zenith towards north/south (0 = zenith pointing).
    rocking_period_s : float
        Full north + south rocking cycle (the tilt flips every half period).
    saa : bool
        Zero livetime while the sub-satellite longitude lies in `saa_longitude_deg`.
    saa_longitude_deg : tuple of float
        Geographic longitude range of the SAA passage, degrees east.
    start_time_s : float
        Time stamp of the first sample (seconds, as in .ori files).
    """

    duration_s: float = 86400.0
    cadence_s: float = 60.0
    altitude_km: float = 550.0
    inclination_deg: float = 0.0
    precession_period_days: float = 0.0
    rocking_deg: float = 22.0
    rocking_period_s: float = 86400.0
    saa: bool = False
    saa_longitude_deg: tuple = (-90.0, -20.0)
    start_time_s: float = 1835478000.0

    def __post_init__(self):
        checks = {
            "duration_s": self.duration_s > 0,
            "cadence_s": 0 < self.cadence_s <= self.duration_s,
            "altitude_km": self.altitude_km > 0,
            "inclination_deg": 0 <= self.inclination_deg <= 180,
            "precession_period_days": self.precession_period_days >= 0,
            "rocking_deg": 0 <= self.rocking_deg < 90,
            "rocking_period_s": self.rocking_period_s > 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise CosiInputError(f"orbit parameter '{key}' has an impossible value {getattr(self, key)!r}")
        lo, hi = self.saa_longitude_deg
        if not -180 <= lo < hi <= 180:
            raise CosiInputError(f"orbit parameter 'saa_longitude_deg' must be an increasing range in "
                                 f"[-180, 180], got {self.saa_longitude_deg!r}")

    @classmethod
    def from_dict(cls, values):
        """Build from a mapping; unknown keys are errors naming the key."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise CosiInputError(f"unknown orbit parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        values = dict(values)
        if "saa_longitude_deg" in values:
            values["saa_longitude_deg"] = tuple(values["saa_longitude_deg"])
        return cls(**values)

    @property
    def period_s(self):
        """Orbital period of the circular orbit."""
        a = EARTH_RADIUS_KM + self.altitude_km
        return 2 * np.pi * np.sqrt(a**3 / EARTH_GM_KM3_S2)


def _to_galactic(vectors):
    """Equatorial (ICRS) unit vectors (N, 3) -> Galactic SkyCoord."""
    coords = SkyCoord(x=vectors[:, 0], y=vectors[:, 1], z=vectors[:, 2], frame=ICRS,
                      representation_type="cartesian")
    return coords.galactic


def simulate_orbit(config):
    """Attitude timeline of a simulated orbit.

    Parameters
    ----------
    config : OrbitConfig

    Returns
    -------
    cosi_imaging_plugin.exposure.Orientation
        Samples every ``cadence_s`` with Galactic x/z pointings, altitude, Earth
        zenith and livetime (zero in the SAA and for the last sample).
    """
    t = np.arange(0.0, config.duration_s + 0.5 * config.cadence_s, config.cadence_s)
    omega = 2 * np.pi / config.period_s
    node = 0.0 if config.precession_period_days == 0 else -2 * np.pi * t / (config.precession_period_days * 86400)
    inc = np.radians(config.inclination_deg)
    # orbit plane basis: ascending node direction and its in-plane perpendicular
    node_dir = np.stack([np.cos(node) * np.ones_like(t), np.sin(node) * np.ones_like(t), np.zeros_like(t)], axis=1)
    in_plane = np.stack([-np.sin(node) * np.cos(inc) * np.ones_like(t), np.cos(node) * np.cos(inc) * np.ones_like(t),
                         np.sin(inc) * np.ones_like(t)], axis=1)
    normal = np.cross(node_dir, in_plane)
    phase = (omega * t)[:, None]
    zenith = np.cos(phase) * node_dir + np.sin(phase) * in_plane
    velocity = -np.sin(phase) * node_dir + np.cos(phase) * in_plane
    tilt = np.radians(config.rocking_deg) * np.where((t % config.rocking_period_s) < config.rocking_period_s / 2,
                                                     1.0, -1.0)
    z_axis = np.cos(tilt)[:, None] * zenith + np.sin(tilt)[:, None] * normal
    x_axis = velocity  # perpendicular to zenith and normal, hence to z

    livetime = np.full(t.shape, config.cadence_s)
    livetime[-1] = 0.0
    if config.saa:
        # geographic longitude of the sub-satellite point: inertial longitude minus Earth rotation
        inertial_lon = np.degrees(np.arctan2(zenith[:, 1], zenith[:, 0]))
        geo_lon = (inertial_lon - 360.0 * t / SIDEREAL_DAY_S + 180.0) % 360.0 - 180.0
        lo, hi = config.saa_longitude_deg
        livetime[(geo_lon >= lo) & (geo_lon <= hi)] = 0.0
    logger.info("orbit: %d samples over %.1f d, period %.1f min, livetime fraction %.3f", t.size,
                config.duration_s / 86400, config.period_s / 60, livetime.sum() / config.duration_s)
    return Orientation(time=config.start_time_s + t, x_pointing=_to_galactic(x_axis),
                       z_pointing=_to_galactic(z_axis), altitude=np.full(t.shape, config.altitude_km) * u.km,
                       earth_zenith=_to_galactic(zenith), livetime=livetime * u.s)
