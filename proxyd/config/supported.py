"""What proxyd implements: the one table that says which config fields and extensions work.

Anything set in a config but absent here is an error, never silently ignored. A feature
that adds support extends ``FIELDS`` / ``ENUMS`` / ``EXTENSIONS`` in the same change.
"""
from .. import registry
from . import loader
from .errors import MapKey

_CORE = 'envoy.config.core.v3.'
_ROUTE = 'envoy.config.route.v3.'
_HCM = 'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager'
_ROUTER = 'envoy.extensions.filters.http.router.v3.Router'

_FIELDS = {
    'envoy.config.bootstrap.v3.Bootstrap': 'admin node static_resources dynamic_resources '
                                           'layered_runtime',
    'envoy.config.bootstrap.v3.Bootstrap.DynamicResources': 'lds_config cds_config ads_config',
    'envoy.config.bootstrap.v3.LayeredRuntime': 'layers',
    'envoy.config.bootstrap.v3.RuntimeLayer': 'name static_layer rtds_layer disk_layer '
                                              'admin_layer',
    'envoy.config.bootstrap.v3.RuntimeLayer.DiskLayer': 'symlink_root subdirectory '
                                                        'append_service_cluster',
    'envoy.config.bootstrap.v3.RuntimeLayer.AdminLayer': '',
    'envoy.config.bootstrap.v3.RuntimeLayer.RtdsLayer': 'name rtds_config',
    'envoy.service.runtime.v3.Runtime': 'name layer',
    _CORE + 'ConfigSource': 'ads api_config_source path_config_source initial_fetch_timeout '
                            'resource_api_version',
    _CORE + 'AggregatedConfigSource': '',
    _CORE + 'ApiConfigSource': 'api_type transport_api_version grpc_services '
                               'set_node_on_first_message_only cluster_names refresh_delay '
                               'request_timeout',
    _CORE + 'GrpcService': 'envoy_grpc timeout',
    _CORE + 'GrpcService.EnvoyGrpc': 'cluster_name',
    _CORE + 'PathConfigSource': 'path watched_directory',
    _CORE + 'WatchedDirectory': 'path',
    _CORE + 'Http2ProtocolOptions': '',
    'envoy.config.bootstrap.v3.Bootstrap.StaticResources': 'listeners clusters secrets',
    'envoy.config.bootstrap.v3.Admin': 'address',
    _CORE + 'Node': 'id cluster metadata locality',
    _CORE + 'Locality': 'region zone sub_zone',
    _CORE + 'Address': 'socket_address',
    _CORE + 'SocketAddress': 'address port_value protocol',
    _CORE + 'HttpProtocolOptions': 'idle_timeout',
    _CORE + 'HeaderValueOption': 'header append append_action keep_empty_value',
    _CORE + 'HeaderValue': 'key value raw_value',
    _CORE + 'DataSource': 'inline_string inline_bytes filename environment_variable',
    'envoy.config.listener.v3.Listener': 'name address filter_chains access_log',
    'envoy.config.listener.v3.FilterChain': 'filters',
    'envoy.config.listener.v3.Filter': 'name typed_config',
    _HCM: 'stat_prefix codec_type route_config http_filters common_http_protocol_options '
          'max_request_headers_kb generate_request_id preserve_external_request_id '
          'always_set_request_id_in_response use_remote_address server_name '
          'stream_idle_timeout request_timeout rds access_log tracing',
    _HCM + '.Tracing': 'client_sampling random_sampling overall_sampling provider custom_tags '
                       'max_path_tag_length verbose spawn_upstream_span operation '
                       'upstream_operation',
    'envoy.type.tracing.v3.CustomTag': 'tag literal environment request_header metadata',
    'envoy.type.tracing.v3.CustomTag.Literal': 'value',
    'envoy.type.tracing.v3.CustomTag.Environment': 'name default_value',
    'envoy.type.tracing.v3.CustomTag.Header': 'name default_value',
    'envoy.type.tracing.v3.CustomTag.Metadata': 'kind metadata_key default_value',
    'envoy.type.metadata.v3.MetadataKind': 'request',
    'envoy.type.metadata.v3.MetadataKind.Request': '',
    'envoy.type.metadata.v3.MetadataKey': 'key path',
    'envoy.type.metadata.v3.MetadataKey.PathSegment': 'key',
    'envoy.config.trace.v3.OpenTelemetryConfig': 'grpc_service http_service service_name '
                                                 'resource_detectors '
                                                 'sampler max_cache_size',
    _CORE + 'HttpService': 'http_uri request_headers_to_add',
    _CORE + 'HttpUri': 'uri cluster timeout',
    'envoy.extensions.tracers.opentelemetry.resource_detectors.v3.'
    'EnvironmentResourceDetectorConfig': '',
    'envoy.extensions.tracers.opentelemetry.resource_detectors.v3.'
    'StaticConfigResourceDetectorConfig': 'attributes',
    'envoy.extensions.tracers.opentelemetry.resource_detectors.v3.'
    'StaticConfigResourceDetectorConfig.AttributesEntry': 'key value',
    'envoy.extensions.tracers.opentelemetry.samplers.v3.AlwaysOnSamplerConfig': '',
    'envoy.extensions.tracers.opentelemetry.samplers.v3.ParentBasedSamplerConfig':
        'wrapped_sampler',
    'envoy.type.v3.Percent': 'value',
    'envoy.config.trace.v3.Tracing.Http': 'name typed_config',
    'envoy.config.trace.v3.ZipkinConfig': 'collector_cluster collector_endpoint trace_id_128bit '
                                          'shared_span_context collector_endpoint_version '
                                          'collector_hostname split_spans_for_request '
                                          'trace_context_option',
    'envoy.config.accesslog.v3.AccessLog': 'name filter typed_config',
    'envoy.config.accesslog.v3.AccessLogFilter': 'status_code_filter duration_filter '
                                                 'not_health_check_filter traceable_filter '
                                                 'runtime_filter and_filter or_filter '
                                                 'response_flag_filter header_filter',
    'envoy.config.accesslog.v3.StatusCodeFilter': 'comparison',
    'envoy.config.accesslog.v3.DurationFilter': 'comparison',
    'envoy.config.accesslog.v3.ComparisonFilter': 'op value',
    _CORE + 'RuntimeUInt32': 'default_value runtime_key',
    'envoy.config.accesslog.v3.NotHealthCheckFilter': '',
    'envoy.config.accesslog.v3.TraceableFilter': '',
    'envoy.config.accesslog.v3.RuntimeFilter': 'runtime_key percent_sampled '
                                               'use_independent_randomness',
    'envoy.type.v3.FractionalPercent': 'numerator denominator',
    'envoy.config.accesslog.v3.AndFilter': 'filters',
    'envoy.config.accesslog.v3.OrFilter': 'filters',
    'envoy.config.accesslog.v3.ResponseFlagFilter': 'flags',
    'envoy.config.accesslog.v3.HeaderFilter': 'header',
    'envoy.extensions.access_loggers.file.v3.FileAccessLog': 'path format json_format '
                                                             'typed_json_format log_format',
    'envoy.extensions.access_loggers.stream.v3.StdoutAccessLog': 'log_format',
    'envoy.extensions.access_loggers.stream.v3.StderrAccessLog': 'log_format',
    _CORE + 'SubstitutionFormatString': 'text_format json_format text_format_source '
                                        'omit_empty_values',
    'envoy.extensions.filters.network.http_connection_manager.v3.Rds':
        'config_source route_config_name',
    'envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter':
        'name typed_config disabled',
    _ROUTER: '',
    _ROUTE + 'RouteConfiguration': 'name virtual_hosts request_headers_to_add '
                                   'request_headers_to_remove response_headers_to_add '
                                   'response_headers_to_remove validate_clusters '
                                   'typed_per_filter_config most_specific_header_mutations_wins '
                                   'max_direct_response_body_size_bytes '
                                   'ignore_port_in_host_matching '
                                   'ignore_path_parameters_in_path_matching',
    _ROUTE + 'VirtualHost': 'name domains routes request_headers_to_add request_headers_to_remove '
                            'response_headers_to_add response_headers_to_remove '
                            'typed_per_filter_config',
    _ROUTE + 'Route': 'name match route redirect direct_response request_headers_to_add '
                      'request_headers_to_remove response_headers_to_add response_headers_to_remove '
                      'typed_per_filter_config',
    _ROUTE + 'FilterConfig': 'config is_optional disabled',
    _ROUTE + 'RouteConfiguration.TypedPerFilterConfigEntry': 'key value',
    _ROUTE + 'VirtualHost.TypedPerFilterConfigEntry': 'key value',
    _ROUTE + 'Route.TypedPerFilterConfigEntry': 'key value',
    _ROUTE + 'RouteMatch': 'prefix path safe_regex path_separated_prefix case_sensitive headers',
    _ROUTE + 'RouteAction': 'cluster cluster_header weighted_clusters '
                            'cluster_not_found_response_code prefix_rewrite regex_rewrite timeout '
                            'host_rewrite_literal auto_host_rewrite append_x_forwarded_host',
    'envoy.type.matcher.v3.RegexMatchAndSubstitute': 'pattern substitution',
    _ROUTE + 'WeightedCluster': 'clusters total_weight',
    _ROUTE + 'WeightedCluster.ClusterWeight': 'name weight',
    _ROUTE + 'RedirectAction': 'https_redirect scheme_redirect host_redirect port_redirect '
                               'path_redirect prefix_rewrite response_code strip_query',
    _ROUTE + 'DirectResponseAction': 'status body',
    'envoy.type.matcher.v3.RegexMatcher': 'google_re2 regex',
    'envoy.type.matcher.v3.RegexMatcher.GoogleRE2': '',
    'envoy.type.matcher.v3.StringMatcher': 'exact prefix suffix contains safe_regex ignore_case',
    _ROUTE + 'HeaderMatcher': 'name exact_match safe_regex_match present_match prefix_match '
                              'suffix_match contains_match string_match invert_match range_match '
                              'treat_missing_header_as_empty',
    'envoy.type.v3.Int64Range': 'start end',
    'envoy.config.cluster.v3.Cluster': 'name type connect_timeout lb_policy load_assignment '
                                       'dns_refresh_rate dns_lookup_family eds_cluster_config '
                                       'http2_protocol_options',
    'envoy.config.cluster.v3.Cluster.EdsClusterConfig': 'eds_config service_name',
    'envoy.config.endpoint.v3.ClusterLoadAssignment': 'cluster_name endpoints',
    'envoy.config.endpoint.v3.LocalityLbEndpoints': 'lb_endpoints locality',
    'envoy.config.endpoint.v3.LbEndpoint': 'endpoint load_balancing_weight',
    'envoy.config.endpoint.v3.Endpoint': 'address hostname',
}
_TLS = 'envoy.extensions.transport_sockets.tls.v3.'
_TCP = 'envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy'
for _name, _more in {  # TLS, listener filters, filter chain match, tcp_proxy
    'envoy.config.listener.v3.Listener': 'listener_filters listener_filters_timeout '
                                         'continue_on_listener_filters_timeout default_filter_chain',
    'envoy.config.listener.v3.FilterChain': 'name filter_chain_match transport_socket '
                                            'transport_socket_connect_timeout',
    'envoy.config.listener.v3.FilterChainMatch': 'destination_port server_names '
                                                 'transport_protocol application_protocols',
    'envoy.config.listener.v3.ListenerFilter': 'name typed_config',
    'envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector': 'max_client_hello_size',
    _CORE + 'TransportSocket': 'name typed_config',
    _TLS + 'DownstreamTlsContext': 'common_tls_context require_client_certificate',
    _TLS + 'UpstreamTlsContext': 'common_tls_context sni',
    _TLS + 'CommonTlsContext': 'tls_params tls_certificates validation_context alpn_protocols '
                               'tls_certificate_sds_secret_configs '
                               'validation_context_sds_secret_config combined_validation_context',
    # SDS (transport/secrets.py, master/dynamic.py): static, xDS or watched-file secrets
    _TLS + 'CommonTlsContext.CombinedCertificateValidationContext':
        'default_validation_context validation_context_sds_secret_config',
    _TLS + 'SdsSecretConfig': 'name sds_config',
    _TLS + 'Secret': 'name tls_certificate validation_context',
    _TLS + 'TlsParameters': 'tls_minimum_protocol_version tls_maximum_protocol_version '
                            'cipher_suites',
    _TLS + 'TlsCertificate': 'certificate_chain private_key password',
    _TLS + 'CertificateValidationContext': 'trusted_ca',
    'envoy.config.cluster.v3.Cluster': 'transport_socket',
    _TCP: 'stat_prefix cluster weighted_clusters idle_timeout max_connect_attempts access_log',
    _TCP + '.WeightedCluster': 'clusters',
    _TCP + '.WeightedCluster.ClusterWeight': 'name weight',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_FIELDS['envoy.extensions.filters.network.echo.v3.Echo'] = ''
_FIELDS['envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy'] = \
    'stat_prefix access_log delay commands'
_FIELDS['envoy.extensions.filters.common.fault.v3.FaultDelay'] = 'fixed_delay percentage'
_THRIFT = 'envoy.extensions.filters.network.thrift_proxy.'
_FIELDS[_THRIFT + 'v3.ThriftProxy'] = ('transport protocol stat_prefix route_config thrift_filters '
                                       'max_requests_per_connection payload_passthrough access_log')
_FIELDS[_THRIFT + 'v3.ThriftFilter'] = 'name typed_config'
_FIELDS[_THRIFT + 'v3.ThriftProtocolOptions'] = 'transport protocol'
_FIELDS[_THRIFT + 'v3.RouteConfiguration'] = 'name routes'
_FIELDS[_THRIFT + 'v3.Route'] = 'match route'
_FIELDS[_THRIFT + 'v3.RouteMatch'] = 'method_name service_name invert headers'
_FIELDS[_THRIFT + 'v3.RouteAction'] = ('cluster weighted_clusters strip_service_name '
                                       'request_mirror_policies')
_FIELDS[_THRIFT + 'v3.RouteAction.RequestMirrorPolicy'] = 'cluster runtime_fraction'
_FIELDS[_THRIFT + 'v3.WeightedCluster'] = 'clusters'
_FIELDS[_THRIFT + 'v3.WeightedCluster.ClusterWeight'] = 'name weight'
_FIELDS[_THRIFT + 'router.v3.Router'] = 'close_downstream_on_upstream_error'
_REDIS = 'envoy.extensions.filters.network.redis_proxy.v3.'
for _name, _more in {  # redis_proxy, and the consistent-hash balancers it hashes keys with
    _REDIS + 'RedisProxy': 'stat_prefix settings latency_in_micros prefix_routes '
                           'downstream_auth_password downstream_auth_passwords '
                           'downstream_auth_username faults',
    _REDIS + 'RedisProxy.ConnPoolSettings': 'op_timeout enable_hashtagging enable_redirection',
    _REDIS + 'RedisProxy.PrefixRoutes': 'routes case_insensitive catch_all_route',
    _REDIS + 'RedisProxy.PrefixRoutes.Route': 'prefix remove_prefix cluster request_mirror_policy',
    _REDIS + 'RedisProxy.PrefixRoutes.Route.RequestMirrorPolicy':
        'cluster runtime_fraction exclude_read_commands',
    _REDIS + 'RedisProxy.RedisFault': 'fault_type fault_enabled delay commands',
    _REDIS + 'RedisProtocolOptions': 'auth_password auth_username',
    _CORE + 'RuntimeFractionalPercent': 'default_value runtime_key',
    'envoy.config.cluster.v3.Cluster': 'ring_hash_lb_config maglev_lb_config',
    'envoy.config.cluster.v3.Cluster.RingHashLbConfig': 'minimum_ring_size maximum_ring_size '
                                                        'hash_function',
    'envoy.config.cluster.v3.Cluster.MaglevLbConfig': 'table_size',
    'envoy.config.cluster.v3.Cluster': 'cluster_type',
    'envoy.config.cluster.v3.Cluster.CustomClusterType': 'name typed_config',
    'envoy.extensions.clusters.redis.v3.RedisClusterConfig': 'cluster_refresh_rate',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_UPH = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions'
for _name, _more in {  # upgrades (WebSocket over HTTP/1.1 and HTTP/2, CONNECT)
    _HCM: 'upgrade_configs',
    _HCM + '.UpgradeConfig': 'upgrade_type enabled',
    _ROUTE + 'RouteAction': 'upgrade_configs',
    _ROUTE + 'RouteAction.UpgradeConfig': 'upgrade_type enabled connect_config',
    _ROUTE + 'RouteAction.UpgradeConfig.ConnectConfig': 'allow_post',
    _ROUTE + 'RouteMatch': 'connect_matcher',
    _ROUTE + 'RouteMatch.ConnectMatcher': '',
    _CORE + 'Http2ProtocolOptions': 'allow_connect',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
for _name, _more in {  # HTTP/2 both ways, gRPC deadlines
    _HCM: 'http2_protocol_options drain_timeout',
    _CORE + 'Http2ProtocolOptions': 'max_concurrent_streams initial_stream_window_size '
                                    'initial_connection_window_size',
    _CORE + 'Http1ProtocolOptions': '',
    'envoy.config.cluster.v3.Cluster': 'typed_extension_protocol_options',
    'envoy.config.cluster.v3.Cluster.TypedExtensionProtocolOptionsEntry': 'key value',
    _UPH: 'explicit_http_config use_downstream_protocol_config',
    _UPH + '.ExplicitHttpConfig': 'http_protocol_options http2_protocol_options',
    _UPH + '.UseDownstreamHttpConfig': 'http_protocol_options http2_protocol_options',
    _ROUTE + 'RouteAction': 'max_grpc_timeout grpc_timeout_offset',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
for _name, _more in {  # route retries (router/retry_policy.py)
    _ROUTE + 'RouteAction': 'retry_policy',
    _ROUTE + 'VirtualHost': 'retry_policy include_attempt_count_in_response '
                            'include_request_attempt_count',
    _ROUTE + 'RetryPolicy': 'retry_on num_retries per_try_timeout retry_back_off '
                            'retriable_status_codes retriable_headers retry_host_predicate '
                            'host_selection_retry_max_attempts',
    _ROUTE + 'RetryPolicy.RetryHostPredicate': 'name typed_config',
    'envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate': '',
    _ROUTE + 'RetryPolicy.RetryBackOff': 'base_interval max_interval',
    _HCM: 'internal_address_config',
    _HCM + '.InternalAddressConfig': 'cidr_ranges',
    _CORE + 'CidrRange': 'address_prefix prefix_len',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
for _name, _more in {  # load balancing (upstream/lb.py, router/hash_policy.py)
    # (the redis block above names ring_hash_lb_config and maglev_lb_config in a dict
    # literal that repeats the Cluster key, so only its last entry counted)
    'envoy.config.cluster.v3.Cluster': 'common_lb_config least_request_lb_config '
                                       'ring_hash_lb_config maglev_lb_config',
    'envoy.config.cluster.v3.Cluster.CommonLbConfig': 'healthy_panic_threshold '
                                                      'locality_weighted_lb_config '
                                                      'consistent_hashing_lb_config',
    'envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig': '',
    'envoy.config.cluster.v3.Cluster.CommonLbConfig.ConsistentHashingLbConfig':
        'use_hostname_for_hashing',
    'envoy.config.cluster.v3.Cluster.LeastRequestLbConfig': 'choice_count active_request_bias',
    _CORE + 'RuntimeDouble': 'default_value',
    'envoy.config.endpoint.v3.ClusterLoadAssignment': 'policy',
    'envoy.config.endpoint.v3.ClusterLoadAssignment.Policy': 'overprovisioning_factor',
    'envoy.config.endpoint.v3.LocalityLbEndpoints': 'load_balancing_weight priority',
    _ROUTE + 'RouteAction': 'hash_policy',
    _ROUTE + 'RouteAction.HashPolicy': 'header cookie connection_properties query_parameter '
                                       'filter_state terminal',
    _ROUTE + 'RouteAction.HashPolicy.Header': 'header_name regex_rewrite',
    _ROUTE + 'RouteAction.HashPolicy.Cookie': 'name ttl path attributes',
    _ROUTE + 'RouteAction.HashPolicy.CookieAttribute': 'name value',
    _ROUTE + 'RouteAction.HashPolicy.ConnectionProperties': 'source_ip',
    _ROUTE + 'RouteAction.HashPolicy.QueryParameter': 'name',
    _ROUTE + 'RouteAction.HashPolicy.FilterState': 'key',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
for _name, _more in {  # request mirroring (router/shadow.py)
    _ROUTE + 'RouteConfiguration': 'request_mirror_policies',
    _ROUTE + 'VirtualHost': 'request_mirror_policies',
    _ROUTE + 'RouteAction': 'request_mirror_policies',
    _ROUTE + 'RouteAction.RequestMirrorPolicy': 'cluster runtime_fraction trace_sampled '
                                                'disable_shadow_host_suffix_append',
    _CORE + 'RuntimeFractionalPercent': 'default_value runtime_key',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
for _name, _more in {  # the watchdog (master/watchdog.py)
    'envoy.config.bootstrap.v3.Bootstrap': 'watchdogs watchdog',
    'envoy.config.bootstrap.v3.Watchdogs': 'main_thread_watchdog worker_watchdog',
    'envoy.config.bootstrap.v3.Watchdog': 'miss_timeout megamiss_timeout kill_timeout',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_DCX = 'envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig'
for _name, _more in {  # downstream connection limits (listener/limits.py)
    'envoy.config.bootstrap.v3.Bootstrap': 'overload_manager',
    'envoy.config.overload.v3.OverloadManager': 'resource_monitors',
    'envoy.config.overload.v3.ResourceMonitor': 'name typed_config',
    _DCX: 'max_active_downstream_connections',
    'envoy.config.listener.v3.Listener': 'ignore_global_conn_limit',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
for _name, _more in {  # circuit breakers: no retry budgets, no per-host thresholds
    'envoy.config.cluster.v3.Cluster': 'circuit_breakers',
    'envoy.config.cluster.v3.CircuitBreakers': 'thresholds',
    'envoy.config.cluster.v3.CircuitBreakers.Thresholds':
        'priority max_connections max_pending_requests max_requests max_retries '
        'track_remaining max_connection_pools',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
# stream timeouts (http/stream_timers.py): route idle and durations; connection limits
# (http/conn_manager.py: max_connection_duration, max_requests_per_connection)
for _name, _more in {
    _ROUTE + 'RouteAction': 'idle_timeout max_stream_duration',
    _ROUTE + 'RouteAction.MaxStreamDuration': 'max_stream_duration grpc_timeout_header_max '
                                              'grpc_timeout_header_offset',
    _CORE + 'HttpProtocolOptions': 'max_stream_duration max_connection_duration '
                                   'max_requests_per_connection',
    # a cluster's (upstream/cluster.py): idle_timeout, max_stream_duration (UMSDR),
    # max_requests_per_connection, max_connection_duration (the pools)
    _UPH: 'common_http_protocol_options',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
for _name, _more in {  # hostile clients: slow heads, HTTP/2 floods
    _HCM: 'request_headers_timeout',
    _CORE + 'Http2ProtocolOptions': 'max_outbound_frames max_outbound_control_frames '
                                    'max_consecutive_inbound_frames_with_empty_payload '
                                    'max_inbound_priority_frames_per_stream '
                                    'max_inbound_window_update_frames_per_data_frame_sent',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_HTTP = 'envoy.extensions.filters.http.'
_FAULT = 'envoy.extensions.filters.common.fault.v3.'
_COMPRESSOR = _HTTP + 'compressor.v3.Compressor'
for _name, _more in {  # edge HTTP filters: CORS, fault injection, compression
    _HTTP + 'cors.v3.Cors': '',
    _ROUTE + 'VirtualHost': 'cors',
    _ROUTE + 'RouteAction': 'cors',
    _ROUTE + 'CorsPolicy': 'allow_origin_string_match allow_methods allow_headers expose_headers '
                           'max_age allow_credentials filter_enabled shadow_enabled '
                           'forward_not_matching_preflights allow_private_network_access',
    _HTTP + 'cors.v3.CorsPolicy': 'allow_origin_string_match allow_methods allow_headers '
                                  'expose_headers max_age allow_credentials filter_enabled '
                                  'shadow_enabled forward_not_matching_preflights '
                                  'allow_private_network_access',
    _HTTP + 'fault.v3.HTTPFault': 'delay abort max_active_faults headers upstream_cluster '
                                  'downstream_nodes',
    _HTTP + 'fault.v3.FaultAbort': 'http_status grpc_status header_abort percentage',
    _HTTP + 'fault.v3.FaultAbort.HeaderAbort': '',
    _FAULT + 'FaultDelay': 'header_delay',
    _FAULT + 'FaultDelay.HeaderDelay': '',
    _COMPRESSOR: 'compressor_library response_direction_config',
    _COMPRESSOR + '.ResponseDirectionConfig': 'common_config disable_on_etag_header '
                                              'remove_accept_encoding_header '
                                              'uncompressible_response_codes',
    _COMPRESSOR + '.CommonDirectionConfig': 'enabled min_content_length content_type',
    _COMPRESSOR + 'PerRoute': 'disabled',
    _CORE + 'TypedExtensionConfig': 'name typed_config',
    _CORE + 'RuntimeFeatureFlag': 'default_value runtime_key',
    'envoy.extensions.compression.gzip.compressor.v3.Gzip': 'memory_level compression_level '
                                                            'compression_strategy window_bits '
                                                            'chunk_size',
    'envoy.extensions.compression.brotli.compressor.v3.Brotli': 'quality encoder_mode window_bits '
                                                                'input_block_bits chunk_size',
    'envoy.extensions.compression.zstd.compressor.v3.Zstd': 'compression_level enable_checksum '
                                                            'strategy chunk_size',
    _HTTP + 'decompressor.v3.Decompressor': 'decompressor_library request_direction_config '
                                            'response_direction_config',
    _HTTP + 'decompressor.v3.Decompressor.RequestDirectionConfig': 'common_config '
                                                                   'advertise_accept_encoding',
    _HTTP + 'decompressor.v3.Decompressor.ResponseDirectionConfig': 'common_config',
    _HTTP + 'decompressor.v3.Decompressor.CommonDirectionConfig': 'enabled '
                                                                  'ignore_no_transform_header',
    'envoy.extensions.compression.gzip.decompressor.v3.Gzip': 'window_bits chunk_size '
                                                              'max_inflate_ratio',
    'envoy.extensions.compression.brotli.decompressor.v3.Brotli': 'chunk_size '
                                                                  'disable_ring_buffer_reallocation',
    'envoy.extensions.compression.zstd.decompressor.v3.Zstd': 'chunk_size',
    _HTTP + 'csrf.v3.CsrfPolicy': 'filter_enabled shadow_enabled additional_origins',
    _HTTP + 'buffer.v3.Buffer': 'max_request_bytes',
    _HTTP + 'buffer.v3.BufferPerRoute': 'disabled buffer',
    _HTTP + 'health_check.v3.HealthCheck': 'pass_through_mode cache_time '
                                           'cluster_min_healthy_percentages headers',
    _HTTP + 'health_check.v3.HealthCheck.ClusterMinHealthyPercentagesEntry': 'key value',
    _HTTP + 'grpc_web.v3.GrpcWeb': '',
    _HTTP + 'header_to_metadata.v3.Config': 'request_rules response_rules',
    _HTTP + 'header_to_metadata.v3.Config.Rule': 'header cookie on_header_present '
                                                 'on_header_missing remove',
    _HTTP + 'header_to_metadata.v3.Config.KeyValuePair': 'metadata_namespace key value '
                                                         'regex_value_rewrite type encode',
    _HTTP + 'lua.v3.Lua': 'inline_code source_codes default_source_code stat_prefix',
    _HTTP + 'lua.v3.Lua.SourceCodesEntry': 'key value',
    _HTTP + 'lua.v3.LuaPerRoute': 'disabled name source_code',
    _ROUTE + 'Route': 'decorator',
    _HCM: 'add_user_agent via',
    _ROUTE + 'Decorator': 'operation propagate',
    _ROUTE + 'RouteMatch': 'grpc',
    _ROUTE + 'RouteMatch.GrpcRouteMatchOptions': '',
    _HTTP + 'grpc_http1_bridge.v3.Config': '',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_LRL = 'envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit'
for _name, _more in {  # local rate limits (http/ and network/filters/local_ratelimit.py): no descriptors
    _LRL: 'stat_prefix status token_bucket filter_enabled filter_enforced '
          'request_headers_to_add_when_not_enforced response_headers_to_add',
    'envoy.type.v3.TokenBucket': 'max_tokens tokens_per_fill fill_interval',
    'envoy.type.v3.HttpStatus': 'code',
    'envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit':
        'stat_prefix token_bucket runtime_enabled share_key',
    _CORE + 'RuntimeFeatureFlag': 'default_value runtime_key',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_RBAC = 'envoy.config.rbac.v3.'
for _name, _more in {  # RBAC (http/filters/rbac.py): no matcher, LOG, metadata or TLS principals
    'envoy.extensions.filters.http.rbac.v3.RBAC': 'rules shadow_rules',
    'envoy.extensions.filters.http.rbac.v3.RBACPerRoute': 'rbac',
    'envoy.extensions.filters.network.rbac.v3.RBAC': 'rules shadow_rules stat_prefix',
    _RBAC + 'RBAC': 'action policies',
    _RBAC + 'RBAC.PoliciesEntry': 'key value',
    _RBAC + 'Policy': 'permissions principals',
    _RBAC + 'Permission': 'any and_rules or_rules not_rule header url_path destination_ip '
                          'destination_port destination_port_range',
    _RBAC + 'Permission.Set': 'rules',
    _RBAC + 'Principal': 'any and_ids or_ids not_id source_ip direct_remote_ip remote_ip '
                         'header url_path',
    _RBAC + 'Principal.Set': 'ids',
    _CORE + 'CidrRange': 'address_prefix prefix_len',
    'envoy.type.matcher.v3.PathMatcher': 'path',
    'envoy.type.v3.Int32Range': 'start end',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_HC = _CORE + 'HealthCheck'
for _name, _more in {  # active health checks, outlier detection, EDS health status
    'envoy.config.cluster.v3.Cluster': 'health_checks outlier_detection',
    _HC: 'timeout interval initial_jitter interval_jitter interval_jitter_percent '
         'unhealthy_threshold healthy_threshold reuse_connection no_traffic_interval '
         'no_traffic_healthy_interval unhealthy_interval unhealthy_edge_interval '
         'healthy_edge_interval event_log_path http_health_check tcp_health_check '
         'grpc_health_check',
    _HC + '.HttpHealthCheck': 'host path request_headers_to_add request_headers_to_remove '
                              'expected_statuses retriable_statuses codec_client_type',
    _HC + '.TcpHealthCheck': 'send receive',
    _HC + '.GrpcHealthCheck': 'service_name authority initial_metadata',
    _HC + '.Payload': 'text binary',
    'envoy.type.v3.Int64Range': 'start end',
    'envoy.config.cluster.v3.OutlierDetection':
        'consecutive_5xx interval base_ejection_time max_ejection_percent '
        'enforcing_consecutive_5xx enforcing_success_rate success_rate_minimum_hosts '
        'success_rate_request_volume success_rate_stdev_factor consecutive_gateway_failure '
        'enforcing_consecutive_gateway_failure split_external_local_origin_errors '
        'consecutive_local_origin_failure enforcing_consecutive_local_origin_failure '
        'enforcing_local_origin_success_rate failure_percentage_threshold '
        'enforcing_failure_percentage enforcing_failure_percentage_local_origin '
        'failure_percentage_minimum_hosts failure_percentage_request_volume '
        'max_ejection_time max_ejection_time_jitter successful_active_health_check_uneject_host '
        'always_eject_one_host',
    'envoy.config.bootstrap.v3.Bootstrap': 'cluster_manager',
    'envoy.config.bootstrap.v3.ClusterManager': 'outlier_detection',
    'envoy.config.bootstrap.v3.ClusterManager.OutlierDetection': 'event_log_path',
    'envoy.config.endpoint.v3.LbEndpoint': 'health_status',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_LF = 'envoy.extensions.filters.listener.'
# listener filters (listener/filters/): no TLV pass-through, no tlv_location FILTER_STATE
# (its default, DYNAMIC_METADATA, is never 'set')
for _name, _more in {
    _LF + 'proxy_protocol.v3.ProxyProtocol': 'rules allow_requests_without_proxy_protocol '
                                             'disallowed_versions stat_prefix',
    _LF + 'proxy_protocol.v3.ProxyProtocol.Rule': 'tlv_type on_tlv_present',
    _LF + 'proxy_protocol.v3.ProxyProtocol.KeyValuePair': 'metadata_namespace key',
    _LF + 'http_inspector.v3.HttpInspector': '',
    _LF + 'original_dst.v3.OriginalDst': '',
    # UDP listeners and udp_proxy (listener/udp.py, listener/filters/udp_proxy.py): a route
    # by cluster or a matcher with only on_no_match; no hashing, tunnels, session filters
    'envoy.config.listener.v3.Listener': 'udp_listener_config',
    'envoy.config.listener.v3.UdpListenerConfig': 'downstream_socket_config',
    _CORE + 'UdpSocketConfig': 'max_rx_datagram_size',
    'envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig': 'stat_prefix cluster matcher '
                                                                'idle_timeout '
                                                                'upstream_socket_config',
    'xds.type.matcher.v3.Matcher': 'on_no_match',
    'xds.type.matcher.v3.Matcher.OnMatch': 'action',
    'xds.core.v3.TypedExtensionConfig': 'name typed_config',
    'envoy.extensions.filters.udp.udp_proxy.v3.Route': 'cluster',
    # ORIGINAL_DST clusters (upstream/original_dst.py): no metadata_key
    'envoy.config.cluster.v3.Cluster': 'original_dst_lb_config cleanup_interval',
    'envoy.config.cluster.v3.Cluster.OriginalDstLbConfig': 'use_http_header http_header_name '
                                                           'upstream_port_override',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_EXT_AUTHZ = _HTTP + 'ext_authz.v3.'
for _name, _more in {  # ext_authz (http/filters/ext_authz.py): envoy_grpc and raw HTTP services
    _EXT_AUTHZ + 'ExtAuthz': 'grpc_service http_service transport_api_version failure_mode_allow '
                             'failure_mode_allow_header_add with_request_body clear_route_cache '
                             'status_on_error metadata_context_namespaces filter_enabled '
                             'deny_at_disable stat_prefix allowed_headers disallowed_headers',
    _EXT_AUTHZ + 'HttpService': 'server_uri path_prefix authorization_request '
                                'authorization_response',
    _EXT_AUTHZ + 'AuthorizationRequest': 'allowed_headers headers_to_add',
    _EXT_AUTHZ + 'AuthorizationResponse': 'allowed_upstream_headers '
                                          'allowed_upstream_headers_to_append '
                                          'allowed_client_headers '
                                          'allowed_client_headers_on_success '
                                          'dynamic_metadata_from_headers',
    _EXT_AUTHZ + 'BufferSettings': 'max_request_bytes allow_partial_message pack_as_bytes',
    _EXT_AUTHZ + 'ExtAuthzPerRoute': 'disabled check_settings',
    _EXT_AUTHZ + 'CheckSettings': 'context_extensions disable_request_body_buffering',
    _EXT_AUTHZ + 'CheckSettings.ContextExtensionsEntry': 'key value',
    _CORE + 'HttpUri': 'uri cluster timeout',
    _CORE + 'GrpcService': 'initial_metadata',
    _CORE + 'GrpcService.EnvoyGrpc': 'authority',
    'envoy.type.matcher.v3.ListStringMatcher': 'patterns',
    _CORE + 'RuntimeFeatureFlag': 'default_value runtime_key',
    _CORE + 'RuntimeFractionalPercent': 'default_value runtime_key',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
_FIELDS['envoy.extensions.filters.network.ext_authz.v3.ExtAuthz'] = \
    'stat_prefix grpc_service failure_mode_allow transport_api_version'
_RLA = _ROUTE + 'RateLimit.Action'
for _name, _more in {  # global rate limits (http/filters/ratelimit.py, router/rate_limits.py)
    _HTTP + 'ratelimit.v3.RateLimit': 'domain stage request_type timeout failure_mode_deny '
                                      'rate_limited_as_resource_exhausted rate_limit_service '
                                      'enable_x_ratelimit_headers '
                                      'disable_x_envoy_ratelimited_header rate_limited_status '
                                      'status_on_error filter_enabled filter_enforced '
                                      'response_headers_to_add',
    _HTTP + 'ratelimit.v3.RateLimitPerRoute': 'vh_rate_limits domain',
    'envoy.config.ratelimit.v3.RateLimitServiceConfig': 'grpc_service transport_api_version',
    _ROUTE + 'RouteAction': 'rate_limits include_vh_rate_limits',
    _ROUTE + 'VirtualHost': 'rate_limits',
    _ROUTE + 'RateLimit': 'stage actions',
    _RLA: 'source_cluster destination_cluster request_headers remote_address generic_key '
          'header_value_match masked_remote_address',
    _RLA + '.MaskedRemoteAddress': 'v4_prefix_mask_len v6_prefix_mask_len',
    _RLA + '.SourceCluster': '',
    _RLA + '.DestinationCluster': '',
    _RLA + '.RemoteAddress': '',
    _RLA + '.RequestHeaders': 'header_name descriptor_key skip_if_absent',
    _RLA + '.GenericKey': 'descriptor_value descriptor_key',
    _RLA + '.HeaderValueMatch': 'descriptor_key descriptor_value expect_match headers',
    'envoy.extensions.filters.network.ratelimit.v3.RateLimit':
        'stat_prefix domain descriptors timeout failure_mode_deny rate_limit_service',
    'envoy.extensions.common.ratelimit.v3.RateLimitDescriptor': 'entries',
    'envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry': 'key value',
}.items():
    _FIELDS[_name] = (_FIELDS.get(_name, '') + ' ' + _more).strip()
FIELDS = {name: frozenset(fields.split()) for name, fields in _FIELDS.items()}
"""Full message name -> names of the fields proxyd implements."""

DESCRIPTIVE = {name: frozenset(fields.split()) for name, fields in {
    # Envoy's own examples set it; in Envoy it only names tracing spans (semantic.py
    # refuses OUTBOUND beside HCM tracing) and matters for original_dst on Windows.
    'envoy.config.listener.v3.Listener': 'traffic_direction metadata',
    # Metadata is read only by filters, matchers and load balancers proxyd lacks.
    'envoy.config.cluster.v3.Cluster': 'metadata',
    _ROUTE + 'Route': 'metadata',
    _ROUTE + 'VirtualHost': 'metadata',
    'envoy.config.endpoint.v3.LbEndpoint': 'metadata',
    # Envoy 1.40's global ratelimit filter sends no hits_addend for it (checked against
    # its RateLimitService in tests/conformance/test_ratelimit_conformance.py).
    _ROUTE + 'RateLimit': 'hits_addend',
}.items()}
"""Full message name -> fields that describe and change nothing proxyd does: accepted,
shown in /config_dump, never acted on. A field that changes behaviour is not listed here:
it stays an error until FIELDS lists it."""

ENUMS = {
    (_THRIFT + 'v3.ThriftProxy', 'protocol'): frozenset({'AUTO_PROTOCOL', 'BINARY', 'LAX_BINARY',
                                                          'COMPACT'}),
    (_THRIFT + 'v3.ThriftProtocolOptions', 'protocol'): frozenset({'AUTO_PROTOCOL', 'BINARY',
                                                                   'LAX_BINARY', 'COMPACT'}),
    (_CORE + 'SocketAddress', 'protocol'): frozenset({'TCP', 'UDP'}),
    ('envoy.config.cluster.v3.Cluster', 'type'): frozenset({'STATIC', 'STRICT_DNS', 'LOGICAL_DNS',
                                                            'EDS', 'ORIGINAL_DST'}),
    # RING_HASH and MAGLEV hash a route's hash_policy (and redis_proxy's keys); without
    # a hash key they pick a random point, as Envoy does.
    ('envoy.config.cluster.v3.Cluster', 'lb_policy'): frozenset({
        'ROUND_ROBIN', 'LEAST_REQUEST', 'RANDOM', 'RING_HASH', 'MAGLEV', 'CLUSTER_PROVIDED'}),
    ('envoy.config.cluster.v3.Cluster', 'dns_lookup_family'):
        frozenset({'AUTO', 'V4_ONLY', 'V6_ONLY', 'V4_PREFERRED'}),
    (_HCM, 'codec_type'): frozenset({'AUTO', 'HTTP1', 'HTTP2'}),
    (_CORE + 'ApiConfigSource', 'api_type'):
        frozenset({'GRPC', 'DELTA_GRPC', 'AGGREGATED_GRPC', 'AGGREGATED_DELTA_GRPC', 'REST'}),
    (_CORE + 'ConfigSource', 'resource_api_version'): frozenset({'V3'}),
    ('envoy.config.rbac.v3.RBAC', 'action'): frozenset({'ALLOW', 'DENY'}),
    (_CORE + 'ApiConfigSource', 'transport_api_version'): frozenset({'V3'}),
    (_HC + '.HttpHealthCheck', 'codec_client_type'): frozenset({'HTTP1', 'HTTP2'}),
    (_HTTP + 'ext_authz.v3.ExtAuthz', 'transport_api_version'): frozenset({'V3'}),
    ('envoy.extensions.filters.network.ext_authz.v3.ExtAuthz', 'transport_api_version'):
        frozenset({'V3'}),
    ('envoy.config.ratelimit.v3.RateLimitServiceConfig', 'transport_api_version'):
        frozenset({'V3'}),
}
"""(message, enum field) -> the values proxyd implements; other enum fields allow every value."""

NETWORK_FILTER, HTTP_FILTER = registry.NETWORK_FILTER, registry.HTTP_FILTER
EXTENSIONS = registry.kinds()
"""Supported typed_config type URL -> the kind of extension it is (from proxyd.registry,
the table the worker builds extensions from)."""
STRUCT_CONFIGURED = frozenset(registry.TYPE_PREFIX + n for n in (
    'proxyd.filters.http.python.v1.Python', 'proxyd.filters.http.python.v1.PythonPerRoute'))
"""proxyd's own extensions: no compiled proto, configured by an xds TypedStruct whose Struct
the extension validates itself (`proxyd check` runs that validation)."""

SLOTS = {
    ('envoy.config.listener.v3.Filter', 'typed_config'): NETWORK_FILTER,
    ('envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter', 'typed_config'):
        HTTP_FILTER,
    ('envoy.config.accesslog.v3.AccessLog', 'typed_config'): registry.ACCESS_LOGGER,
    ('envoy.config.trace.v3.Tracing.Http', 'typed_config'): registry.TRACER,
    ('envoy.config.listener.v3.ListenerFilter', 'typed_config'): registry.LISTENER_FILTER,
    (_CORE + 'TransportSocket', 'typed_config'): registry.TRANSPORT_SOCKET,
    (_THRIFT + 'v3.ThriftFilter', 'typed_config'): registry.THRIFT_FILTER,
    ('envoy.config.cluster.v3.Cluster', 'typed_extension_protocol_options'):
        registry.UPSTREAM_PROTOCOL_OPTIONS,
    ('envoy.config.cluster.v3.Cluster.CustomClusterType', 'typed_config'): registry.CLUSTER,
    ('envoy.config.overload.v3.ResourceMonitor', 'typed_config'): registry.RESOURCE_MONITOR,
    (_ROUTE + 'RouteConfiguration', 'typed_per_filter_config'): registry.HTTP_ROUTE_CONFIG,
    (_ROUTE + 'VirtualHost', 'typed_per_filter_config'): registry.HTTP_ROUTE_CONFIG,
    (_ROUTE + 'Route', 'typed_per_filter_config'): registry.HTTP_ROUTE_CONFIG,
    (_ROUTE + 'FilterConfig', 'config'): registry.HTTP_ROUTE_CONFIG,
    (_ROUTE + 'RetryPolicy.RetryHostPredicate', 'typed_config'): registry.RETRY_HOST_PREDICATE,
    # only udp_proxy's matcher uses xds matchers here (its on_no_match action)
    ('xds.core.v3.TypedExtensionConfig', 'typed_config'): registry.UDP_PROXY_ROUTE,
}
"""(message, Any field) -> the kind of extension that field takes."""


def check(msg, path=()):
    """Every set field, enum value and extension proxyd does not implement, as [(path, reason)]."""
    out = []
    _check(msg, path, out)
    return out


def _check(msg, path, out):
    desc = msg.DESCRIPTOR
    if desc.full_name.startswith('google.protobuf.'):
        return  # Struct, Duration, wrappers: leaves (Any is handled by its field's slot)
    supported = FIELDS.get(desc.full_name, frozenset())
    descriptive = DESCRIPTIVE.get(desc.full_name, frozenset())
    for field, value in msg.ListFields():
        fpath = path + (field.name,)
        if field.name in descriptive:
            continue
        if field.name not in supported:
            out.append((fpath, f"field '{field.name}' of {desc.full_name} is not supported by proxyd"))
            continue
        allowed = ENUMS.get((desc.full_name, field.name))
        if allowed is not None:
            value_desc = field.enum_type.values_by_number.get(value)
            # An undefined number is PGV's defined_only error, which every listed enum has.
            if value_desc is not None and value_desc.name not in allowed:
                out.append((fpath, f"value {value_desc.name} of {desc.full_name}.{field.name} is not "
                                   f"supported by proxyd (supported: {', '.join(sorted(allowed))})"))
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name['value'].message_type is not None:
                for k, v in value.items():
                    _sub(v, (desc.full_name, field.name), fpath + (MapKey(k),), out)
        elif field.is_repeated:
            for i, v in enumerate(value):
                _sub(v, (desc.full_name, field.name), fpath + (i,), out)
        else:
            _sub(value, (desc.full_name, field.name), fpath, out)


def _sub(msg, slot, path, out):
    if msg.DESCRIPTOR.full_name != 'google.protobuf.Any':
        _check(msg, path, out)
        return
    typed_struct = msg.type_url.rsplit('/', 1)[-1] in loader.TYPED_STRUCTS
    inner = loader.unpack(msg) if typed_struct else None
    url = inner.type_url if typed_struct else msg.type_url
    kind = EXTENSIONS.get(url)
    if not msg.type_url:
        out.append((path, "'@type' is missing"))
    elif kind is None:
        out.append((path, f'extension {url} is not supported by proxyd'))
    elif slot in SLOTS and not registry.fills(url, SLOTS[slot]):
        out.append((path, f'extension {msg.type_url} is a {kind}, not a {SLOTS[slot]}'))
    elif not typed_struct:  # a TypedStruct's Struct is checked by its extension
        _check(loader.unpack(msg), path, out)
