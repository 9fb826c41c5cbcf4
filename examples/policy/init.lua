-- Tern example policy: a working starting point for a bulk sender.
-- Run from the repository root with `bash scripts/run-example.sh`.
-- Everything it writes goes under ./local/.
local kumo = require 'kumo'

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = 'local/spool/data', kind = 'RocksDB' }
  kumo.define_spool { name = 'meta', path = 'local/spool/meta', kind = 'RocksDB' }
  kumo.configure_local_logs { log_dir = 'local/logs', max_segment_duration = '1 minute' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:2525',
    relay_hosts = { '127.0.0.1', '::1' },
  }
  kumo.start_http_listener { listen = '127.0.0.1:8000' }
end)

-- Selectors per sending domain, read once per Lua context (the seed's example).
local DKIM_CONFIG = kumo.json_load 'examples/policy/dkim_config.json'

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1m',
    max_age = '1 day',
  }
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_meta('tenant', msg:get_first_named_header_value 'X-Tenant' or 'default')
  local from = msg:from_header()
  if from and DKIM_CONFIG[from.domain] then
    kumo.log_debug('would sign for ' .. from.domain .. ' with selector ' .. DKIM_CONFIG[from.domain])
  end
end)
