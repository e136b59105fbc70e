"""The plugin system: what a component is and how rats finds them.

- ``hookspecs``: the pluggy hook specifications (one per component kind) and ``hookimpl``;
- ``interfaces``: the protocols a backbone, reward, gate, horizon schedule, metric and callback satisfy;
- ``catalogue``: a registered component, its option schema read from the factory's signature, the registry;
- ``plugins``: the plugin manager: built-ins and third-party packages found through the ``rats`` entry points.

May import: ``rats_core.errors`` only. Plugins (built-in and third-party) import from here.
"""
