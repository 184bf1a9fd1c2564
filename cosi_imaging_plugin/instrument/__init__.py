"""The synthetic COSI-like instrument: response generator, Compton kinematics and orbit.

- :class:`InstrumentConfig`: every physical number of the instrument, from YAML.
- :func:`generate_response`: a version-1 FullDetectorResponse built chunk by chunk.
- :class:`OrbitConfig`, :func:`simulate_orbit`: attitude timelines (zenith or rocking).
"""
from .config import InstrumentConfig
from .orbit import OrbitConfig, simulate_orbit
from .response_generator import GeneratedResponse, effective_area, generate_response

__all__ = ["InstrumentConfig", "OrbitConfig", "simulate_orbit", "GeneratedResponse", "effective_area",
           "generate_response"]
