// Key Vault holding the provider secrets, authorised by Azure RBAC only.
//
// No secret is created here, on purpose: secret VALUES never go through a deployment.
// Set them out of band after `azd provision`, e.g.
//   az keyvault secret set --vault-name <AZURE_KEY_VAULT_NAME> --name hf-api-token       --value <token>
//   az keyvault secret set --vault-name <AZURE_KEY_VAULT_NAME> --name elevenlabs-api-key --value <key>
//   az keyvault secret set --vault-name <AZURE_KEY_VAULT_NAME> --name llm-api-key        --value <key>
// (the names shared/secrets.py reads). The deploying principal gets Key Vault Secrets
// Officer in rbac.bicep so it can do this; the app's identity gets Key Vault Secrets User.
//
// A deleted vault stays soft-deleted for 90 days and keeps its name. With purge protection
// (on by default, for production) nothing can purge it sooner, so re-provisioning the same
// environment after `azd down` needs createMode 'recover' (or another vault name). Without
// it (development environments), `azd down --purge` frees the name at once.

@description('Name of the Key Vault (3-24 characters, globally unique).')
@minLength(3)
@maxLength(24)
param name string

@description('Location of the Key Vault.')
param location string = resourceGroup().location

@description('Tags for the Key Vault.')
param tags object = {}

@description('Log Analytics workspace that receives the vault\'s audit logs; empty sends none.')
param logAnalyticsWorkspaceId string = ''

@description('Purge protection: a deleted vault cannot be purged before its retention ends. It cannot be turned off once on.')
param enablePurgeProtection bool = true

@description('default creates the vault; recover restores a soft-deleted vault of the same name.')
@allowed([
  'default'
  'recover'
])
param createMode string = 'default'

@description('Send Azure Verified Modules usage telemetry.')
param enableTelemetry bool = true

module vault 'br/public:avm/res/key-vault/vault:0.13.3' = {
  // Not 'key-vault': main.bicep's deployment of this file has that name in the same
  // resource group, and two deployments of one name in one scope fail (DeploymentActive).
  name: 'key-vault-vault'
  params: {
    name: name
    location: location
    tags: tags
    sku: 'standard'
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: enablePurgeProtection
    createMode: createMode
    enableTelemetry: enableTelemetry
    // Flex Consumption without a virtual network reaches the vault over its public endpoint;
    // access is still gated by Entra ID tokens and the RBAC roles in rbac.bicep.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    enableVaultForDeployment: false
    enableVaultForDiskEncryption: false
    enableVaultForTemplateDeployment: false
    diagnosticSettings: empty(logAnalyticsWorkspaceId) ? [] : [
      {
        name: 'audit-to-log-analytics'
        workspaceResourceId: logAnalyticsWorkspaceId
      }
    ]
  }
}

@description('Name of the Key Vault.')
output name string = vault.outputs.name

@description('Resource id of the Key Vault.')
output resourceId string = vault.outputs.resourceId

@description('Vault URI, e.g. https://kv-xyz.vault.azure.net/.')
output uri string = vault.outputs.uri
