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
  if domain == 'sink.test' then
    -- Try the whole path locally: run `tern bench sink --listen 127.0.0.1:2526`
    -- and send to anything@sink.test (tempfail@ and permfail@ fail on purpose).
    return kumo.make_queue_config {
      retry_interval = '10s',
      protocol = { smtp = { mx_list = { '[127.0.0.1]:2526' } } },
    }
  end
  return kumo.make_queue_config {
    retry_interval = '1m',
    max_age = '1 day',
  }
end)

kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  if routing_domain == 'sink.test' then
    -- Loopback is a prohibited destination unless a path allows it.
    return kumo.make_egress_path { prohibited_hosts = {}, enable_tls = 'OpportunisticInsecure' }
  end
  return kumo.make_egress_path { connection_limit = 10, max_message_rate = '100/s' }
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  msg:set_meta('tenant', msg:get_first_named_header_value 'X-Tenant' or 'default')
  local from = msg:from_header()
  if from and DKIM_CONFIG[from.domain] then
    kumo.log_debug('would sign for ' .. from.domain .. ' with selector ' .. DKIM_CONFIG[from.domain])
  end
end)
