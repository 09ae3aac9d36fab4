"""Which version answers a request for a served name.

* ``router``  the ``Router`` protocol and ``AliasRouter``, today's behaviour: a
              name goes to what it was served as (an alias, a fixed version or
              the newest), ``name@alias`` and ``/versions/N`` go where they say
"""
