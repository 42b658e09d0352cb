-- wrk script: mixed market load, half full-text searches, half CEL matches over one dataset's
-- offers. Each connection waits BDC_DELAY_MS between requests, so C connections offer about
-- C * 1000 / BDC_DELAY_MS requests a second (wrk itself has no fixed-rate mode).
local words = { "kaiko", "binance", "btc", "eth%20trades", "orderbook", "sol", "usd", "coinbase%202024" }
local datasets = tonumber(os.getenv("BDC_DATASETS") or "20000")
local delay_ms = tonumber(os.getenv("BDC_DELAY_MS") or "50")
local n = 0

request = function()
  n = n + 1
  if n % 2 == 0 then
    local root = string.format("0x%064x", (n * 7919) % datasets + 1)
    local body = '{"root":"' .. root .. '","require":"capacity_mibps >= 50.0",'
      .. '"rank":{"cheap":"-1.0 * price_gib","rep":"reputation","eu":"region == \'eu\' ? 0.5 : 0.0"}}'
    return wrk.format("POST", "/match", { ["content-type"] = "application/json" }, body)
  end
  return wrk.format("GET", "/datasets?q=" .. words[(n % #words) + 1] .. "&limit=20")
end

delay = function()
  return delay_ms
end
