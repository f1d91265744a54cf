"""Tests of the test harness itself (``testbed/``): that its peers behave as documented."""
