// Web server facts as the host agent (`server-facts`) reports them on hosts this machine cannot run.
import type { ServerFacts } from '../../src/deploy/server-facts.js';

/** CentOS 7: httpd 2.4.6, base mod_wsgi 3.4 for Python 2.7 (`rpm -qf` names the package). */
export const CENTOS7_FACTS: ServerFacts = {
  apache: {
    command: 'apachectl',
    version: '2.4.6',
    config: '/etc/httpd/conf/httpd.conf',
    log_dir: 'logs',
    mod_wsgi: {
      module: '/etc/httpd/modules/mod_wsgi.so',
      version: '3.4',
      source: 'package mod_wsgi 3.4',
      python: '2.7',
    },
  },
  apache_tried: ['apachectl'],
  paths: {},
};
