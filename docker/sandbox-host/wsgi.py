# encoding: utf-8
"""CKAN's WSGI entry point (CKAN 2.9 style) for the sandbox host.

mod_wsgi runs this in the `ckan` daemon process group, whose python-home is /usr/lib/ckan/current:
the release `current` points at when the daemon process starts.
"""
import os
from logging.config import fileConfig as loggingFileConfig

from ckan.cli import CKANConfigLoader
from ckan.config.middleware import make_app

config_path = os.environ.get(u'CKAN_INI', u'/usr/lib/ckan/current/ckan.ini')

if not os.path.exists(config_path):
    raise RuntimeError(u'CKAN config option not found: {}'.format(config_path))

try:
    from ckan.cli import has_logging_config
except ImportError:  # real CKAN: always has logging sections
    loggingFileConfig(config_path)
else:
    if has_logging_config(config_path):
        loggingFileConfig(config_path)

config = CKANConfigLoader(config_path).get_config()

application = make_app(config)
